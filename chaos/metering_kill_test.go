package chaos_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// usageSink is an OpenMeter stand-in that keeps every event it accepts.
type usageSink struct {
	mu     sync.Mutex
	events map[string]map[string]any // id → event
}

func (u *usageSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/events" || r.Header.Get("Authorization") != "Bearer om-test" {
		http.Error(w, "bad request target or key", http.StatusUnauthorized)
		return
	}
	b, _ := io.ReadAll(r.Body)
	var batch []map[string]any
	if err := json.Unmarshal(b, &batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	u.mu.Lock()
	for _, e := range batch {
		u.events[e["id"].(string)] = e
	}
	u.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// find returns the accepted events of type typ whose data has every field
// of want.
func (u *usageSink) find(typ string, want map[string]any) []map[string]any {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []map[string]any
next:
	for _, e := range u.events {
		if e["type"] != typ {
			continue
		}
		d, _ := e["data"].(map[string]any)
		for k, v := range want {
			if d[k] != v {
				continue next
			}
		}
		out = append(out, e)
	}
	return out
}

// A replica killed (-9) in the middle of a streamed turn is still billed
// for the call: its durable in-flight record (written while the turn runs)
// is swept by the surviving replica, which publishes the call's api.request
// (interrupted: 503) and the user's session.message to OpenMeter.
func TestKilledCallIsBilled(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	sink := &usageSink{events: map[string]map[string]any{}}
	om := httptest.NewServer(sink)
	t.Cleanup(om.Close)
	env := map[string]string{
		"NATS_SERVERS":             nats.URL(),
		"SOUL_CHUNK_DELAY":         "300ms",
		"OPENMETER_ENABLED":        "true",
		"OPENMETER_BASE_URL":       om.URL,
		"OPENMETER_API_KEY":        "om-test",
		"OPENMETER_FLUSH_INTERVAL": "0.05",
		// The default (45 s) is sized for riding out NATS failovers; the
		// sweep itself is what is tested here.
		"KGENTS_INFLIGHT_DEAD_AFTER": "10s",
	}
	a, b := startReplica(t, env), startReplica(t, env)
	_ = b
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	var sess session
	if code, err := a.do(ctx, "POST", "/v1/kgent/sessions", bob, `{"title":"bill me"}`, &sess); err != nil || code != 200 {
		t.Fatalf("create: %d %v", code, err)
	}
	turn, closeTurn, err := a.stream(ctx, "POST", "/v1/kgent/sessions/"+sess.ID+"/messages", bob,
		`{"message":"I want to rewrite everything in Rust, tell me why I should not"}`)
	if err != nil {
		t.Fatal(err)
	}
	defer closeTurn()
	go func() { // keep reading, as a client would
		for {
			if _, err := turn.Next(); err != nil {
				return
			}
		}
	}()

	// The durable record of the running turn, holding the user's message,
	// exists before the kill (on a loaded machine the first record can be
	// written before the turn has recorded it; the next refresh has it).
	_, js := nats.Connect(t)
	eventually(t, 30*time.Second, "the turn's in-flight record with its user message", func() error {
		kv, err := js.KeyValue(ctx, billing.InflightBucket)
		if err != nil {
			return err
		}
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			return err
		}
		for k := range keys.Keys() {
			e, err := kv.Get(ctx, k)
			if err != nil {
				continue
			}
			var rec billing.InflightRecord
			if json.Unmarshal(e.Value(), &rec) != nil {
				continue
			}
			for _, ev := range rec.Events {
				if strings.Contains(string(ev), `"session.message"`) {
					return nil
				}
			}
		}
		return jetstream.ErrNoKeysFound
	})
	a.kill()
	killed := time.Now()

	route := "/v1/kgent/sessions/{session_id}/messages"
	// The record's events are published together but may reach OpenMeter
	// in different batches (two sink workers): wait for both.
	took := eventually(t, 60*time.Second, "the killed turn's api.request and user message at OpenMeter", func() error {
		if len(sink.find("api.request", map[string]any{"endpoint": route, "status_code": 503.0})) == 0 ||
			len(sink.find("session.message", map[string]any{"session_id": sess.ID, "role": "user"})) == 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	if n := len(sink.find("session.message", map[string]any{"session_id": sess.ID, "role": "user"})); n != 1 {
		t.Errorf("the killed turn's user message is billed %d times: %v", n, sink.find("session.message", nil))
	}
	t.Logf("the killed call was billed %s after the kill (%s after the wait began)", time.Since(killed).Round(time.Millisecond), took.Round(time.Millisecond))
}
