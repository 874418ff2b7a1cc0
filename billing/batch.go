package billing

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/kgents/kgents-go/apijson"
	"github.com/kgents/kgents-go/streaming"
)

// One call's usage events travel together: an API call that produced
// several (api.request and llm.tokens for a dialogue turn, say) is one
// JetStream message on BatchSubject holding a JSON array of its structured
// CloudEvents — the CloudEvents JSON batch format, which is also what the
// sink posts to OpenMeter. That halves the metering stream's writes, acks
// and reads for the commonest call (the stream was where a loaded kgentsd
// spent most of its metering CPU, and its in-memory queue was what
// overflowed into the spool under load). A call with one event publishes it
// alone on EventSubject(type), as before; every consumer takes both.
//
// Each event keeps its own id: OpenMeter, the usage rollup and dead letters
// work by event. A batch's Nats-Msg-Id is derived from its events' ids, so a
// replay of the same batch (the spool) is stored once.

// BatchSubject is where a call's events are published together.
const BatchSubject = EventSubjectPrefix + batchToken

// batchToken is BatchSubject's last token; no event type is "batch".
const batchToken = "batch"

// IsBatch reports whether a metering message holds several events.
func IsBatch(subject string) bool { return subject == BatchSubject }

// CallMessage is the metering message of one call's events: alone on its
// type's subject, or together on BatchSubject. events must not be empty.
func CallMessage(events []event.Event) (streaming.Message, error) {
	if len(events) == 0 {
		return streaming.Message{}, errors.New("billing: a call message needs an event")
	}
	if len(events) == 1 {
		data, err := Marshal(events[0])
		if err != nil {
			return streaming.Message{}, err
		}
		return streaming.Message{Subject: EventSubject(events[0].Type()), Data: data, MsgID: events[0].ID()}, nil
	}
	b := make([]byte, 0, 256*len(events))
	b = append(b, '[')
	for i := range events {
		if err := checkBuilt(&events[i]); err != nil {
			return streaming.Message{}, err
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = appendEvent(b, &events[i])
	}
	b = append(b, ']')
	return streaming.Message{Subject: BatchSubject, Data: b, MsgID: batchMsgID(events)}, nil
}

// checkBuilt is validate for the events this package's constructors build
// (or their JSON read back from an in-flight record): the fields those leave
// to the caller. The full CloudEvents check runs again in the sink.
func checkBuilt(ev *event.Event) error {
	switch {
	case ev.ID() == "":
		return errors.New("billing: invalid CloudEvent: id is required")
	case ev.Subject() == "":
		return errors.New("billing: invalid CloudEvent: subject (tenant) is required")
	case !validSubjectToken(ev.Type()):
		return fmt.Errorf("billing: invalid CloudEvent: type %q cannot be a NATS subject", ev.Type())
	case ev.Source() == "" || ev.SpecVersion() != event.CloudEventsVersionV1:
		return fmt.Errorf("billing: invalid CloudEvent %s: source and specversion 1.0 are required", ev.ID())
	}
	return nil
}

// batchMsgID names a batch by all its events' ids (a digest): the same for
// every copy of it, and different for any other set. (The first id and a
// count were enough while a message held one call; a batch of several calls
// can start with an Idempotency-Key replay's id — the run's — and then
// have the run's count, and JetStream dropped it as the run's duplicate,
// with the other calls' events in it.)
func batchMsgID(events []event.Event) string {
	h := sha256.New()
	for i := range events {
		_, _ = io.WriteString(h, events[i].ID())
		_, _ = h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	return "batch-" + hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// appendEvent writes ev as a structured-mode CloudEvent, as the SDK would,
// without its reflection: the events here are the ones this package builds
// (validated, data already JSON).
func appendEvent(b []byte, ev *event.Event) []byte {
	b = append(b, `{"specversion":"1.0","id":`...)
	b = apijson.AppendString(b, ev.ID())
	b = append(b, `,"source":`...)
	b = apijson.AppendString(b, ev.Source())
	b = append(b, `,"type":`...)
	b = apijson.AppendString(b, ev.Type())
	if s := ev.Subject(); s != "" {
		b = append(b, `,"subject":`...)
		b = apijson.AppendString(b, s)
	}
	if t := ev.Time(); !t.IsZero() {
		b = append(b, `,"time":"`...)
		b = t.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	if ct := ev.DataContentType(); ct != "" {
		b = append(b, `,"datacontenttype":`...)
		b = apijson.AppendString(b, ct)
	}
	if len(ev.DataEncoded) > 0 {
		b = append(b, `,"data":`...)
		b = append(b, ev.DataEncoded...)
	}
	return append(b, '}')
}

// SplitMessage returns the events (each one CloudEvent's JSON) of a
// metering message: the one event of a single-event message, each element
// of a batch. A batch that is not a JSON array is an error.
func SplitMessage(subject string, data []byte) ([][]byte, error) {
	if !IsBatch(subject) {
		return [][]byte{data}, nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("billing: batch is not a JSON array of events: %w", err)
	}
	out := make([][]byte, len(raw))
	for i, r := range raw {
		out[i] = r
	}
	return out, nil
}
