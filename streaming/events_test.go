package streaming_test

import (
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/streaming"
)

// Every payload type round-trips through the NATS envelope, which is JSON
// (any JSON reader takes it: `nats sub`, jq), whatever the strings hold.
func TestEventEnvelope(t *testing.T) {
	t.Parallel()
	at := timestamppb.New(time.Date(2026, 12, 6, 1, 2, 3, 456789000, time.UTC))
	odd := "tab\tquote\" nul\x00 del\x7f line\u2028 é 💡"
	cases := []struct {
		typ string
		ev  *sessionsv1.SessionEvent
	}{
		{"message", &sessionsv1.SessionEvent{Payload: &sessionsv1.SessionEvent_Message{Message: &sessionsv1.MessageEvent{MessageId: "m", Role: sessionsv1.Role_ROLE_USER, Content: odd}}}},
		{"chunk", &sessionsv1.SessionEvent{Payload: &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: odd, Index: 3}}}},
		{"complete", &sessionsv1.SessionEvent{Payload: &sessionsv1.SessionEvent_Complete{Complete: &soulv1.DialogueComplete{Text: odd, TokensUsed: 7, Chunks: 2, MessageId: "r", Mode: soulv1.Mode_MODE_ADVISE}}}},
		{"error", &sessionsv1.SessionEvent{Payload: &sessionsv1.SessionEvent_Error{Error: &soulv1.DialogueError{Error: odd, Type: "interrupted"}}}},
		{"mode", &sessionsv1.SessionEvent{Payload: &sessionsv1.SessionEvent_Mode{Mode: &sessionsv1.ModeEvent{Mode: soulv1.Mode_MODE_EXPLORE}}}},
		{"reset", &sessionsv1.SessionEvent{Payload: &sessionsv1.SessionEvent_Reset_{Reset_: &sessionsv1.ResetEvent{Reason: "not_retained"}}}},
		{"end", &sessionsv1.SessionEvent{Payload: &sessionsv1.SessionEvent_End{End: &sessionsv1.EndEvent{Reason: "shutdown"}}}},
	}
	for i, tc := range cases {
		t.Run(tc.typ, func(t *testing.T) {
			t.Parallel()
			ev := tc.ev
			ev.Id, ev.SessionId, ev.Time = "4"+string(rune('0'+i)), "s-\x01\u2028", at
			if got := streaming.EventType(ev); got != tc.typ {
				t.Fatalf("EventType = %q, want %q", got, tc.typ)
			}
			b, err := streaming.EncodeEvent(odd, ev)
			if err != nil {
				t.Fatal(err)
			}
			var envelope map[string]any
			if err := json.Unmarshal(b, &envelope); err != nil {
				t.Fatalf("the envelope is not JSON: %v\n%s", err, b)
			}
			if envelope["type"] != tc.typ || envelope["tenant_id"] != odd || envelope["session_id"] != ev.SessionId {
				t.Errorf("envelope %v", envelope)
			}
			tenant, back, err := streaming.DecodeEvent(b)
			if err != nil {
				t.Fatal(err)
			}
			if tenant != odd || !proto.Equal(back, ev) {
				t.Errorf("round trip: tenant %q, event %v, want %v", tenant, back, ev)
			}
		})
	}
	if got := streaming.EventType(&sessionsv1.SessionEvent{Id: "1"}); got != "unknown" {
		t.Errorf("EventType of an event without payload = %q", got)
	}
	if _, err := streaming.EncodeEvent("t", &sessionsv1.SessionEvent{Id: "1"}); err == nil {
		t.Error("an event without payload was encoded")
	}
	if _, _, err := streaming.DecodeEvent([]byte(`{"type":"id","id":"1","data":{}}`)); err == nil {
		t.Error("a type that is a field of SessionEvent but not of its payload was decoded")
	}
}
