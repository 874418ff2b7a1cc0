package streaming

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
)

// Session events on NATS (SPEC §4.9): subject kgent.session.<session>.<type>
// on stream kgent-events, kept 7 days.
const (
	EventsStream  = "kgent-events"
	SessionRoot   = "kgent.session"
	EventsMaxAge  = 7 * 24 * time.Hour
	HeaderTenant  = "Kgents-Tenant"
	HeaderEventID = "Kgents-Event-Id"
	// HeaderTurnStarted is when the turn that made the event began
	// (RFC 3339), on every event of a turn: what a resume reads from
	// (History.Replay).
	HeaderTurnStarted = "Kgents-Turn-Started"
)

// SessionSubject is where one event of a session is published.
func SessionSubject(sessionID, eventType string) string {
	return SessionRoot + "." + sessionID + "." + eventType
}

// SessionFilter matches every event of a session.
func SessionFilter(sessionID string) string { return SessionRoot + "." + sessionID + ".>" }

// The event's payload is SessionEvent's oneof "payload"; the name of the
// field set (message, chunk, complete, error, mode, reset, end) is the event's
// type: its SSE event name, the last token of its NATS subject and the
// envelope's "type". Reading it through protobuf reflection keeps one list of
// event types, the .proto's.
var payloadOneof = (&sessionsv1.SessionEvent{}).ProtoReflect().Descriptor().Oneofs().ByName("payload")

// EventType names an event's payload ("unknown" when it has none).
func EventType(ev *sessionsv1.SessionEvent) string {
	if fd := ev.ProtoReflect().WhichOneof(payloadOneof); fd != nil {
		return string(fd.Name())
	}
	return "unknown"
}

// eventPayload is the message in an event's payload (nil when it has none).
func eventPayload(ev *sessionsv1.SessionEvent) proto.Message {
	m := ev.ProtoReflect()
	fd := m.WhichOneof(payloadOneof)
	if fd == nil {
		return nil
	}
	return m.Get(fd).Message().Interface()
}

// newEventPayload sets an empty payload of type typ on ev and returns it
// for decoding into.
func newEventPayload(ev *sessionsv1.SessionEvent, typ string) (proto.Message, bool) {
	fd := payloadOneof.Fields().ByName(protoreflect.Name(typ))
	if fd == nil {
		return nil, false
	}
	m := ev.ProtoReflect()
	v := m.NewField(fd)
	m.Set(fd, v)
	return v.Message().Interface(), true
}

// EventSeq is an event's position in its session (its id as a number).
func EventSeq(ev *sessionsv1.SessionEvent) uint64 {
	n, _ := strconv.ParseUint(ev.GetId(), 10, 64)
	return n
}

// EventMsgID is the event's Nats-Msg-Id: unique per session and event, so a
// replayed publish is stored once.
func EventMsgID(ev *sessionsv1.SessionEvent) string { return ev.GetSessionId() + ":" + ev.GetId() }

// wireEvent is an event's JSON on NATS, readable with `nats sub`:
//
//	{"type":"chunk","id":"5","session_id":"…","tenant_id":"…","timestamp":"…","data":{"text":" keep","index":1}}
type wireEvent struct {
	Type      string          `json:"type"`
	ID        string          `json:"id"`
	SessionID string          `json:"session_id"`
	TenantID  string          `json:"tenant_id"`
	Timestamp string          `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

// EncodeEvent renders an event for NATS.
func EncodeEvent(tenantID string, ev *sessionsv1.SessionEvent) ([]byte, error) {
	payload := eventPayload(ev)
	if payload == nil {
		return nil, fmt.Errorf("session event %s has no payload", ev.GetId())
	}
	ts := ev.GetTime().AsTime()
	if ev.GetTime() == nil {
		ts = time.Now()
	}
	b := make([]byte, 0, 160)
	b = append(b, `{"type":`...)
	b = apijson.AppendString(b, EventType(ev))
	b = append(b, `,"id":`...)
	b = apijson.AppendString(b, ev.GetId())
	b = append(b, `,"session_id":`...)
	b = apijson.AppendString(b, ev.GetSessionId())
	b = append(b, `,"tenant_id":`...)
	b = apijson.AppendString(b, tenantID)
	b = append(b, `,"timestamp":`...)
	b = apijson.AppendTimestamp(b, ts)
	b = append(b, `,"data":`...)
	b = apijson.AppendMessage(b, payload)
	return append(b, '}'), nil
}

// DecodeEvent reads an event published by EncodeEvent.
func DecodeEvent(b []byte) (tenantID string, ev *sessionsv1.SessionEvent, err error) {
	var w wireEvent
	if err := json.Unmarshal(b, &w); err != nil {
		return "", nil, fmt.Errorf("session event: %w", err)
	}
	ev = &sessionsv1.SessionEvent{Id: w.ID, SessionId: w.SessionID}
	if t, err := time.Parse(time.RFC3339Nano, w.Timestamp); err == nil {
		ev.Time = timestamppb.New(t)
	}
	target, ok := newEventPayload(ev, w.Type)
	if !ok {
		return "", nil, fmt.Errorf("session event of unknown type %q", w.Type)
	}
	if err := apijson.Unmarshal(w.Data, target); err != nil {
		return "", nil, fmt.Errorf("session event %s data: %w", w.Type, err)
	}
	return w.TenantID, ev, nil
}

// EventsStreamConfig is the kgent-events stream: session events for
// watchers, kept 7 days. Its duplicate window is JetStream's default: every
// id of the window is held in memory by the server, and watchers drop any
// repeat by event id anyway (a spool replayed after a longer outage may
// store an event twice; nobody sees it twice).
func EventsStreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        EventsStream,
		Description: "kgents session events for watchers: kgent.session.<session>.<type>",
		Subjects:    []string{SessionRoot + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      EventsMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		Duplicates:  2 * time.Minute,
		MaxMsgSize:  256 << 10,
		// History is read with direct gets (direct.go), not consumers.
		AllowDirect: true,
	}
}
