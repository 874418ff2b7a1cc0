package streaming

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// Session events on NATS (SPEC §4.9): subject kgent.session.<session>.<type>
// on stream kgent-events, kept 7 days.
const (
	EventsStream  = "kgent-events"
	SessionRoot   = "kgent.session"
	EventsMaxAge  = 7 * 24 * time.Hour
	HeaderTenant  = "Kgents-Tenant"
	HeaderEventID = "Kgents-Event-Id"
)

// SessionSubject is where one event of a session is published.
func SessionSubject(sessionID, eventType string) string {
	return SessionRoot + "." + sessionID + "." + eventType
}

// SessionFilter matches every event of a session.
func SessionFilter(sessionID string) string { return SessionRoot + "." + sessionID + ".>" }

// EventType names an event's payload: message, chunk, complete, error,
// mode, reset, end.
func EventType(ev *sessionsv1.SessionEvent) string {
	switch ev.GetPayload().(type) {
	case *sessionsv1.SessionEvent_Message:
		return "message"
	case *sessionsv1.SessionEvent_Chunk:
		return "chunk"
	case *sessionsv1.SessionEvent_Complete:
		return "complete"
	case *sessionsv1.SessionEvent_Error:
		return "error"
	case *sessionsv1.SessionEvent_Mode:
		return "mode"
	case *sessionsv1.SessionEvent_Reset_:
		return "reset"
	case *sessionsv1.SessionEvent_End:
		return "end"
	}
	return "unknown"
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
	var payload proto.Message
	switch p := ev.GetPayload().(type) {
	case *sessionsv1.SessionEvent_Message:
		payload = p.Message
	case *sessionsv1.SessionEvent_Chunk:
		payload = p.Chunk
	case *sessionsv1.SessionEvent_Complete:
		payload = p.Complete
	case *sessionsv1.SessionEvent_Error:
		payload = p.Error
	case *sessionsv1.SessionEvent_Mode:
		payload = p.Mode
	case *sessionsv1.SessionEvent_Reset_:
		payload = p.Reset_
	case *sessionsv1.SessionEvent_End:
		payload = p.End
	default:
		return nil, fmt.Errorf("session event %s has no payload", ev.GetId())
	}
	ts := ev.GetTime().AsTime()
	if ev.GetTime() == nil {
		ts = time.Now()
	}
	var b bytes.Buffer
	b.WriteString(`{"type":`)
	b.Write(strconv.AppendQuote(nil, EventType(ev)))
	b.WriteString(`,"id":`)
	b.Write(strconv.AppendQuote(nil, ev.GetId()))
	b.WriteString(`,"session_id":`)
	b.Write(strconv.AppendQuote(nil, ev.GetSessionId()))
	b.WriteString(`,"tenant_id":`)
	b.Write(strconv.AppendQuote(nil, tenantID))
	b.WriteString(`,"timestamp":`)
	b.Write(apijson.AppendTimestamp(nil, ts))
	b.WriteString(`,"data":`)
	b.Write(apijson.AppendMessage(nil, payload))
	b.WriteByte('}')
	return b.Bytes(), nil
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
	var target proto.Message
	switch w.Type {
	case "message":
		m := &sessionsv1.MessageEvent{}
		ev.Payload, target = &sessionsv1.SessionEvent_Message{Message: m}, m
	case "chunk":
		m := &soulv1.DialogueChunk{}
		ev.Payload, target = &sessionsv1.SessionEvent_Chunk{Chunk: m}, m
	case "complete":
		m := &soulv1.DialogueComplete{}
		ev.Payload, target = &sessionsv1.SessionEvent_Complete{Complete: m}, m
	case "error":
		m := &soulv1.DialogueError{}
		ev.Payload, target = &sessionsv1.SessionEvent_Error{Error: m}, m
	case "mode":
		m := &sessionsv1.ModeEvent{}
		ev.Payload, target = &sessionsv1.SessionEvent_Mode{Mode: m}, m
	case "reset":
		m := &sessionsv1.ResetEvent{}
		ev.Payload, target = &sessionsv1.SessionEvent_Reset_{Reset_: m}, m
	case "end":
		m := &sessionsv1.EndEvent{}
		ev.Payload, target = &sessionsv1.SessionEvent_End{End: m}, m
	default:
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
	}
}
