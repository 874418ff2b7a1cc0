package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kgents/kgents-go/server/servertest"
)

// openMeter is a real HTTP server standing in for OpenMeter's ingest API.
// It validates every batch as OpenMeter would, deduplicates by id (as
// OpenMeter does with dedupe on) and can be told to fail.
type openMeter struct {
	t      *testing.T
	url    string
	down   atomic.Bool
	mu     sync.Mutex
	events map[string]map[string]any // id -> event
	raw    int                       // deliveries, duplicates included
	perID  map[string]int            // deliveries by id
	bad    []string
}

func startOpenMeter(t *testing.T) *openMeter {
	om := &openMeter{t: t, events: map[string]map[string]any{}, perID: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(om.serve))
	t.Cleanup(srv.Close)
	om.url = srv.URL
	return om
}

func (om *openMeter) serve(w http.ResponseWriter, r *http.Request) {
	if om.down.Load() {
		http.Error(w, `{"title":"unavailable"}`, http.StatusServiceUnavailable)
		return
	}
	problem := func(msg string) {
		om.mu.Lock()
		om.bad = append(om.bad, msg)
		om.mu.Unlock()
		http.Error(w, msg, http.StatusBadRequest)
	}
	if r.Method != http.MethodPost || r.URL.Path != "/api/v1/events" {
		problem("wrong endpoint " + r.Method + " " + r.URL.Path)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/cloudevents-batch+json" {
		problem("content type " + ct)
		return
	}
	if r.Header.Get("Authorization") != "Bearer om_test_key" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var batch []map[string]any
	if err := json.Unmarshal(body, &batch); err != nil {
		problem("not a JSON array")
		return
	}
	for _, ev := range batch {
		for _, f := range []string{"specversion", "id", "source", "type", "subject", "time", "data"} {
			if ev[f] == nil || ev[f] == "" {
				problem("event without " + f)
				return
			}
		}
		// Usage events come from kgents-api; the subscription and payment
		// events of the Stripe lifecycle from kgents-stripe-bridge.
		source := "kgents-api"
		if typ, _ := ev["type"].(string); strings.HasPrefix(typ, "subscription.") || strings.HasPrefix(typ, "payment.") {
			source = "kgents-stripe-bridge"
		}
		if ev["specversion"] != "1.0" || ev["source"] != source {
			problem("bad specversion/source")
			return
		}
	}
	om.mu.Lock()
	for _, ev := range batch {
		om.events[ev["id"].(string)] = ev
		om.perID[ev["id"].(string)]++
		om.raw++
	}
	om.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (om *openMeter) byType(typ string) []map[string]any {
	om.mu.Lock()
	defer om.mu.Unlock()
	var out []map[string]any
	for _, ev := range om.events {
		if ev["type"] == typ {
			out = append(out, ev)
		}
	}
	return out
}

// deliveries is how many times the event with id was received.
func (om *openMeter) deliveries(id string) int {
	om.mu.Lock()
	defer om.mu.Unlock()
	return om.perID[id]
}

// problems are the batches refused as malformed.
func (om *openMeter) problems() []string {
	om.mu.Lock()
	defer om.mu.Unlock()
	return append([]string(nil), om.bad...)
}

func (om *openMeter) count() int {
	om.mu.Lock()
	defer om.mu.Unlock()
	return len(om.events)
}

func (om *openMeter) waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("OpenMeter never received %s (%d events so far)", what, om.count())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dataOf(ev map[string]any) map[string]any { m, _ := ev["data"].(map[string]any); return m }

func TestUsageReachesOpenMeter(t *testing.T) {
	t.Parallel()
	om := startOpenMeter(t)
	in := servertest.Start(t, map[string]string{
		"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": om.url, "OPENMETER_API_KEY": "om_test_key",
		"OPENMETER_FLUSH_INTERVAL": "0.05", "OPENMETER_BATCH_SIZE": "20",
	})
	const bobTenant = "00000000-0000-0000-0000-000000000001"

	resp, b := in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"I keep rewriting plans instead of shipping","mode":"challenge"}`)
	mustStatus(t, resp, b, http.StatusOK)
	dialogueTokens := decode[dialogue](t, b).TokensUsed
	resp, b = in.Do(t, "POST", "/v1/agentese/invoke", bob, `{"path":"self.soul.challenge","kwargs":{"message":"I avoid hard conversations"}}`)
	mustStatus(t, resp, b, http.StatusOK)
	invokeTokens := decode[invokeResult](t, b).TokensUsed
	s := createSession(t, in, bob, `{"title":"billed"}`)
	resp, b = in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"hello there friend","stream":false}`)
	mustStatus(t, resp, b, http.StatusOK)

	om.waitFor(t, "the session's events", func() bool { return len(om.byType("session.message")) == 2 })
	om.waitFor(t, "llm.tokens for the dialogue and the invoke", func() bool { return len(om.byType("llm.tokens")) >= 2 })

	var sawDialogue bool
	for _, ev := range om.byType("llm.tokens") {
		d := dataOf(ev)
		if ev["subject"] != bobTenant {
			t.Errorf("llm.tokens subject %v, want the tenant", ev["subject"])
		}
		if d["tokens_total"].(float64) == float64(dialogueTokens) && d["mode"] == "challenge" && d["model"] != "" {
			sawDialogue = true
		}
	}
	if !sawDialogue || dialogueTokens == 0 {
		t.Errorf("no llm.tokens event with the dialogue's %d tokens: %v", dialogueTokens, om.byType("llm.tokens"))
	}
	inv := om.byType("agentese.invoke")
	if len(inv) != 1 || dataOf(inv[0])["path"] != "self.soul.challenge" || dataOf(inv[0])["aspect"] != "challenge" ||
		dataOf(inv[0])["tokens_used"].(float64) != float64(invokeTokens) || invokeTokens == 0 {
		t.Errorf("agentese.invoke = %v (invoke said %d tokens)", inv, invokeTokens)
	}
	creates := om.byType("session.create")
	if len(creates) != 1 || dataOf(creates[0])["session_id"] != s.ID || creates[0]["subject"] != bobTenant {
		t.Errorf("session.create = %v", creates)
	}
	var routes []string
	for _, ev := range om.byType("api.request") {
		d := dataOf(ev)
		routes = append(routes, d["method"].(string)+" "+d["endpoint"].(string))
		if strings.Contains(d["endpoint"].(string), s.ID) {
			t.Errorf("api.request endpoint carries an id: %v", d["endpoint"])
		}
	}
	for _, want := range []string{"POST /v1/soul/dialogue", "POST /v1/agentese/invoke", "POST /v1/kgent/sessions", "POST /v1/kgent/sessions/{session_id}/messages"} {
		if !contains(routes, want) {
			t.Errorf("no api.request for %s in %v", want, routes)
		}
	}

	// OpenMeter away for a while: nothing is lost, nothing is counted twice.
	before := om.count()
	om.down.Store(true)
	for i := 0; i < 20; i++ {
		resp, b := in.Do(t, "POST", "/v1/soul/dialogue", carol, `{"prompt":"during the outage"}`)
		mustStatus(t, resp, b, http.StatusOK)
	}
	time.Sleep(1500 * time.Millisecond) // several failed flushes and backoffs
	_, health := in.Do(t, "GET", "/health/saas", "", "")
	if !strings.Contains(string(health), `"status":"unhealthy"`) || !strings.Contains(string(health), `"backlog"`) {
		t.Errorf("/health/saas while OpenMeter is down: %s", health)
	}
	om.down.Store(false)
	om.waitFor(t, "the outage's 40 events", func() bool { return om.count() >= before+40 })
	time.Sleep(300 * time.Millisecond)
	if got := om.count(); got != before+40 {
		t.Errorf("after the outage OpenMeter holds %d distinct events, want %d", got, before+40)
	}
	if len(om.bad) > 0 {
		t.Errorf("OpenMeter rejected batches: %v", om.bad)
	}
}

// TestReplayIsNotBilledTwice: an Idempotency-Key replay re-sends the same
// event ids, so OpenMeter (deduplicating by id) counts the request once.
func TestReplayIsNotBilledTwice(t *testing.T) {
	t.Parallel()
	om := startOpenMeter(t)
	in := servertest.Start(t, map[string]string{
		"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": om.url, "OPENMETER_API_KEY": "om_test_key", "OPENMETER_FLUSH_INTERVAL": "0.05",
	})
	for i := 0; i < 3; i++ {
		resp, b := in.Do(t, "POST", "/v1/kgent/sessions", bob, `{"title":"once"}`, "Idempotency-Key", "same-key")
		mustStatus(t, resp, b, http.StatusOK)
	}
	resp, b := in.Do(t, "GET", "/v1/usage", bob, "") // a marker that arrives after them
	mustStatus(t, resp, b, http.StatusOK)
	om.waitFor(t, "the usage call", func() bool {
		for _, ev := range om.byType("api.request") {
			if dataOf(ev)["endpoint"] == "/v1/usage" {
				return true
			}
		}
		return false
	})
	time.Sleep(200 * time.Millisecond)
	creates := 0
	for _, ev := range om.byType("api.request") {
		if dataOf(ev)["endpoint"] == "/v1/kgent/sessions" {
			creates++
		}
	}
	if creates != 1 || len(om.byType("session.create")) != 1 {
		t.Errorf("3 identical keyed creates billed as %d requests and %d sessions, want 1 and 1", creates, len(om.byType("session.create")))
	}
}

// TestQuotaRefusalsAreMetered: a 429 is an api.request with status 429.
func TestQuotaRefusalsAreMetered(t *testing.T) {
	t.Parallel()
	om := startOpenMeter(t)
	in := servertest.Start(t, map[string]string{
		"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": om.url, "OPENMETER_API_KEY": "om_test_key", "OPENMETER_FLUSH_INTERVAL": "0.05",
		"KGENTS_TIERS_FILE": tiersFile(t, `{"free":{"requests_per_minute":1}}`),
	})
	for i := 0; i < 2; i++ {
		in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"hi"}`)
	}
	om.waitFor(t, "the 429", func() bool {
		for _, ev := range om.byType("api.request") {
			if dataOf(ev)["status_code"] == 429.0 && dataOf(ev)["grpc_code"] == 8.0 {
				return true
			}
		}
		return false
	})
}
