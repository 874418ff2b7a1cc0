package billing

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/streaming/natstest"
)

// sampleEvent builds the i-th test event: the five types in turn.
func sampleEvent(t testing.TB, tag string, i int, tenant string) event.Event {
	t.Helper()
	at := time.Date(2026, 5, 1, 12, 0, 0, i, time.UTC)
	var ev event.Event
	var err error
	switch i % 5 {
	case 0:
		ev, err = NewAPIRequest(EventID(tag, TypeAPIRequest, i), tenant, at, APIRequest{
			Endpoint: "/v1/kgent/sessions/{session_id}/messages", Method: "POST", StatusCode: 200, DurationMS: 12.5})
	case 1:
		ev, err = NewLLMTokens(EventID(tag, TypeLLMTokens, i), tenant, at, LLMTokens{
			TokensIn: 10, TokensOut: 32, Model: "kgent-soul", SessionID: "s-1", Mode: "reflect", Budget: "dialogue"})
	case 2:
		ev, err = NewAgenteseInvoke(EventID(tag, TypeAgenteseInvoke, i), tenant, at, AgenteseInvoke{
			Path: "world.house.manifest", Aspect: "manifest", TokensUsed: 3})
	case 3:
		ev, err = NewSessionCreate(EventID(tag, TypeSessionCreate, i), tenant, at, SessionCreate{SessionID: "s-1", AgentType: "kgent"})
	default:
		ev, err = NewSessionMessage(EventID(tag, TypeSessionMessage, i), tenant, at, SessionMessage{
			SessionID: "s-1", Role: "user", MessageLength: 42})
	}
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestEventID(t *testing.T) {
	t.Parallel()
	id := EventID("req-1", TypeAPIRequest, 0)
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) {
		t.Fatalf("EventID = %q, want 32 hex characters", id)
	}
	if again := EventID("req-1", TypeAPIRequest, 0); again != id {
		t.Fatalf("EventID is not deterministic: %q then %q", id, again)
	}
	seen := map[string]string{id: "base"}
	for name, other := range map[string]string{
		"seq":  EventID("req-1", TypeAPIRequest, 1),
		"type": EventID("req-1", TypeLLMTokens, 0),
		"base": EventID("req-2", TypeAPIRequest, 0),
		// The separators keep "a"+"b.c" and "ab"+".c" apart.
		"shifted": EventID("req-1a", "pi.request", 0),
	} {
		if prev, dup := seen[other]; dup {
			t.Errorf("EventID collides for %s and %s", name, prev)
		}
		seen[other] = name
	}
	if EventID("", TypeAPIRequest, 0) != "" {
		t.Error("an empty base must give an empty id, which constructors reject")
	}
	idem := IdempotencyBase("tenant-a", "key-1")
	if idem == IdempotencyBase("tenant-b", "key-1") || IdempotencyBase("tenant-a", "") != "" {
		t.Error("IdempotencyBase must be scoped to the tenant and need a key")
	}
}

func TestConstructorsEncodeTheContract(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.FixedZone("CEST", 2*3600))
	cases := []struct {
		name string
		make func() (event.Event, error)
		typ  string
		data map[string]any
	}{
		{"api.request", func() (event.Event, error) {
			return NewAPIRequest("id-1", "tenant-1", at, APIRequest{Endpoint: "/kgents.v1.Sessions/Create", Method: "GRPC", StatusCode: 429, GRPCCode: 8, DurationMS: 1.5})
		}, TypeAPIRequest, map[string]any{"endpoint": "/kgents.v1.Sessions/Create", "method": "GRPC", "status_code": 429.0, "grpc_code": 8.0, "duration_ms": 1.5}},
		{"llm.tokens", func() (event.Event, error) {
			return NewLLMTokens("id-2", "tenant-1", at, LLMTokens{TokensIn: 5, TokensOut: 7, Model: "m", SessionID: "s", Mode: "reflect", Budget: "dialogue"})
		}, TypeLLMTokens, map[string]any{"tokens_in": 5.0, "tokens_out": 7.0, "tokens_total": 12.0, "model": "m", "session_id": "s", "mode": "reflect", "budget": "dialogue"}},
		{"agentese.invoke", func() (event.Event, error) {
			return NewAgenteseInvoke("id-3", "tenant-1", at, AgenteseInvoke{Path: "self.soul.challenge", Aspect: "challenge", TokensUsed: 9})
		}, TypeAgenteseInvoke, map[string]any{"path": "self.soul.challenge", "aspect": "challenge", "tokens_used": 9.0}},
		{"session.create", func() (event.Event, error) {
			return NewSessionCreate("id-4", "tenant-1", at, SessionCreate{SessionID: "s", AgentType: "kgent"})
		}, TypeSessionCreate, map[string]any{"session_id": "s", "agent_type": "kgent"}},
		{"session.message", func() (event.Event, error) {
			return NewSessionMessage("id-5", "tenant-1", at, SessionMessage{SessionID: "s", Role: "assistant", MessageLength: 120})
		}, TypeSessionMessage, map[string]any{"session_id": "s", "role": "assistant", "message_length": 120.0}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ev, err := tc.make()
			if err != nil {
				t.Fatal(err)
			}
			b, err := Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			for k, want := range map[string]any{
				"specversion": "1.0", "id": ev.ID(), "source": "kgents-api", "type": tc.typ,
				"subject": "tenant-1", "datacontenttype": "application/json", "time": "2026-05-01T10:00:00Z",
			} {
				if got[k] != want {
					t.Errorf("%s = %v, want %v", k, got[k], want)
				}
			}
			data, _ := got["data"].(map[string]any)
			if len(data) != len(tc.data) {
				t.Errorf("data = %v, want %v", data, tc.data)
			}
			for k, want := range tc.data {
				if data[k] != want {
					t.Errorf("data.%s = %v, want %v", k, data[k], want)
				}
			}
		})
	}
}

func TestConstructorsRejectMissingIdentity(t *testing.T) {
	t.Parallel()
	if _, err := NewAPIRequest("", "tenant", time.Time{}, APIRequest{}); err == nil {
		t.Error("an event without an id was built")
	}
	if _, err := NewAPIRequest(EventID("", TypeAPIRequest, 0), "tenant", time.Time{}, APIRequest{}); err == nil {
		t.Error("an event with an id from an empty base was built")
	}
	if _, err := NewSessionCreate("id", " ", time.Time{}, SessionCreate{}); err == nil {
		t.Error("an event without a tenant was built")
	}
	ev, err := NewSessionCreate("id", "tenant", time.Time{}, SessionCreate{})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(ev.Time()) > time.Minute {
		t.Errorf("a zero time should mean now, got %s", ev.Time())
	}
}

func TestMarshalRejectsWhatOpenMeterWouldNot(t *testing.T) {
	t.Parallel()
	ev := event.New(event.CloudEventsVersionV1)
	ev.SetID("id")
	ev.SetSource(Source)
	ev.SetType(TypeAPIRequest)
	if _, err := Marshal(ev); err == nil {
		t.Error("an event without a subject was marshalled")
	}
	ev.SetSubject("tenant")
	ev.SetType("api.*")
	if _, err := Marshal(ev); err == nil {
		t.Error("an event whose type cannot be a subject was marshalled")
	}
	old := event.New(event.CloudEventsVersionV03)
	old.SetID("id")
	old.SetSource(Source)
	old.SetType(TypeAPIRequest)
	old.SetSubject("tenant")
	if _, err := Marshal(old); err == nil {
		t.Error("a 0.3 event was marshalled")
	}
}

func TestMarshalRoundTripsThroughTheSDK(t *testing.T) {
	t.Parallel()
	ev := sampleEvent(t, "round", 1, "tenant-x")
	b, err := Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var back event.Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	var data LLMTokens
	if err := back.DataAs(&data); err != nil {
		t.Fatal(err)
	}
	if back.ID() != ev.ID() || back.Subject() != "tenant-x" || !back.Time().Equal(ev.Time()) || data.TokensTotal != 42 {
		t.Fatalf("round trip changed the event: %s / %+v", back, data)
	}
}

func TestEnsureStreamAndPublish(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 { // idempotent
		if _, err := EnsureStream(ctx, js, 1); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, StreamName)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.Retention != jetstream.LimitsPolicy || cfg.Storage != jetstream.FileStorage || cfg.MaxAge != 30*24*time.Hour ||
		cfg.Duplicates != 30*time.Second || len(cfg.Subjects) != 1 || cfg.Subjects[0] != "kgent.metering.>" {
		t.Fatalf("stream config %+v", cfg)
	}

	ev := sampleEvent(t, "pub", 0, "tenant-1")
	for range 2 {
		if err := Publish(ctx, js, ev); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := s.GetLastMsgForSubject(ctx, "kgent.metering.events.api.request")
	if err != nil {
		t.Fatal(err)
	}
	if raw.Header.Get("Nats-Msg-Id") != ev.ID() {
		t.Errorf("Nats-Msg-Id = %q, want the event id", raw.Header.Get("Nats-Msg-Id"))
	}
	want, _ := Marshal(ev)
	if string(raw.Data) != string(want) {
		t.Errorf("stored %s, want %s", raw.Data, want)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("the stream holds %d messages after publishing one event twice; want 1 (dedupe by Nats-Msg-Id)", info.State.Msgs)
	}

	bad := event.New()
	if err := Publish(ctx, js, bad); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("publishing an invalid event: %v", err)
	}
}

// TestNewEventAsTheSDKBuildsIt: the constructors fill the event context in
// directly; the event is the one the SDK's setters would build.
func TestNewEventAsTheSDKBuildsIt(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 6, 4, 5, 6, 789, time.FixedZone("X", 3600))
	got, err := NewLLMTokens("id-1", "tenant-1", at, LLMTokens{TokensIn: 1, TokensOut: 2, Model: "m"})
	if err != nil {
		t.Fatal(err)
	}
	want := event.New(event.CloudEventsVersionV1)
	want.SetID("id-1")
	want.SetSource(Source)
	want.SetType(TypeLLMTokens)
	want.SetSubject("tenant-1")
	want.SetTime(at.UTC())
	want.SetDataContentType(event.ApplicationJSON)
	want.DataEncoded = got.DataEncoded
	gb, err := got.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	wb, err := want.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if string(gb) != string(wb) {
		t.Errorf("built\n%s\nwant\n%s", gb, wb)
	}
	if err := got.Validate(); err != nil {
		t.Error(err)
	}
	// Setting a field of one event changes no other's.
	other, _ := NewLLMTokens("id-2", "tenant-2", at, LLMTokens{})
	got.SetSubject("changed")
	if other.Subject() != "tenant-2" {
		t.Errorf("events share their context: %q", other.Subject())
	}
}
