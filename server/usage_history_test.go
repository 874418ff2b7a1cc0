package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/kgents/kgents-go/server/servertest"
)

// omCounter stands in for OpenMeter and counts what it was sent, by
// tenant and type, once per event id.
type omCounter struct {
	mu   sync.Mutex
	seen map[string]bool
	by   map[string]int // tenant/type
}

func (o *omCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	var batch []struct{ ID, Type, Subject string }
	if err := json.Unmarshal(b, &batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range batch {
		if !o.seen[e.ID] {
			o.seen[e.ID] = true
			o.by[e.Subject+"/"+e.Type]++
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (o *omCounter) get(k string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.by[k]
}

// GET /v1/usage/history counts exactly what OpenMeter is sent: after mixed
// traffic (dialogue, sessions, AGENTESE, refused calls), today's point
// equals the stand-in's counts for the tenant, within seconds.
func TestUsageHistoryMatchesWhatIsBilled(t *testing.T) {
	t.Parallel()
	om := &omCounter{seen: map[string]bool{}, by: map[string]int{}}
	srv := httptest.NewServer(om)
	defer srv.Close()
	in := servertest.Start(t, map[string]string{
		"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": srv.URL, "OPENMETER_API_KEY": "k", "OPENMETER_FLUSH_INTERVAL": "50ms",
	})
	const tenant = "00000000-0000-0000-0000-000000000001" // kg_dev_bob's
	for i := range 5 {
		r, body := in.Do(t, "POST", "/v1/soul/dialogue", bob, fmt.Sprintf(`{"prompt":"hello %d"}`, i))
		mustStatus(t, r, body, http.StatusOK)
	}
	s := createSession(t, in, bob, `{}`)
	r, body := in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"hi","stream":false}`)
	mustStatus(t, r, body, http.StatusOK)
	r, body = in.Do(t, "POST", "/v1/agentese/invoke", bob, `{"path":"world.house.manifest"}`)
	mustStatus(t, r, body, http.StatusOK)
	r, _ = in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"x","mode":"nope"}`) // a 400, billed as an error
	if r.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad mode: %d", r.StatusCode)
	}

	type point struct {
		Requests            int `json:"requests"`
		Errors              int `json:"errors"`
		DialogueTurns       int `json:"dialogue_turns"`
		AgenteseInvocations int `json:"agentese_invocations"`
		SessionsCreated     int `json:"sessions_created"`
	}
	var got point
	start := time.Now()
	deadline := start.Add(15 * time.Second)
	for {
		// The history read is a call too (billed after it answers): compare
		// with what the stand-in had before this read.
		wantReq, wantTurns := om.get(tenant+"/api.request"), om.get(tenant+"/llm.tokens")
		wantInv, wantSess := om.get(tenant+"/agentese.invoke"), om.get(tenant+"/session.create")
		r, body := in.Do(t, "GET", "/v1/usage/history?granularity=day", bob, "")
		mustStatus(t, r, body, http.StatusOK)
		var h struct {
			Granularity string  `json:"granularity"`
			Points      []point `json:"points"`
		}
		if err := json.Unmarshal(body, &h); err != nil {
			t.Fatal(err)
		}
		if h.Granularity != "day" || len(h.Points) != 30 {
			t.Fatalf("history shape: %s", body)
		}
		got = h.Points[29]
		if wantReq >= 9 && got.Requests == wantReq && got.DialogueTurns == wantTurns && got.AgenteseInvocations == wantInv && got.SessionsCreated == wantSess && got.Errors >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("today's history %+v; OpenMeter got requests %d, turns %d, invocations %d, sessions %d", got, wantReq, wantTurns, wantInv, wantSess)
		}
		time.Sleep(100 * time.Millisecond) // polling real reads, bounded by the deadline
	}
	t.Logf("history equal to what OpenMeter received within %v: %+v", time.Since(start).Round(time.Millisecond), got)

	for _, q := range []string{"?granularity=week", "?from=2026-01-01&to=2026-12-31", "?from=2026-13-01", "?granularity=hour&from=2026-11-01&to=2026-11-20", "?from=2026-11-05&to=2026-11-01"} {
		r, body := in.Do(t, "GET", "/v1/usage/history"+q, bob, "")
		if r.StatusCode != http.StatusBadRequest {
			t.Errorf("history%s: %d %s, want 400", q, r.StatusCode, body)
		}
	}
}

// Operators read any tenant's history and rank tenants by their month.
func TestOperatorUsageHistoryAndTop(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, nil)
	const bobTenant = "00000000-0000-0000-0000-000000000001"
	for i := range 3 {
		r, body := in.Do(t, "POST", "/v1/soul/dialogue", bob, fmt.Sprintf(`{"prompt":"rank me %d"}`, i))
		mustStatus(t, r, body, http.StatusOK)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, body := in.Do(t, "GET", "/v1/admin/usage/top?by=requests&limit=5", "kg_dev_ops", "")
		mustStatus(t, r, body, http.StatusOK)
		var top struct {
			By      string `json:"by"`
			Tenants []struct {
				TenantID string `json:"tenant_id"`
				Requests int    `json:"requests"`
			} `json:"tenants"`
		}
		if err := json.Unmarshal(body, &top); err != nil {
			t.Fatal(err)
		}
		if top.By == "requests" && len(top.Tenants) > 0 && top.Tenants[0].TenantID == bobTenant && top.Tenants[0].Requests >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("top usage: %s", body)
		}
		time.Sleep(100 * time.Millisecond) // polling real reads, bounded by the deadline
	}
	r, body := in.Do(t, "GET", "/v1/admin/tenants/"+bobTenant+"/usage/history?granularity=hour", "kg_dev_ops", "")
	mustStatus(t, r, body, http.StatusOK)
	var h struct {
		TenantID string            `json:"tenant_id"`
		Points   []json.RawMessage `json:"points"`
	}
	if err := json.Unmarshal(body, &h); err != nil || h.TenantID != bobTenant || len(h.Points) != 7*24 {
		t.Fatalf("operator's hourly history: %.300s (%v)", body, err)
	}
	for _, path := range []string{"/v1/admin/usage/top", "/v1/admin/tenants/" + bobTenant + "/usage/history"} {
		if r, _ := in.Do(t, "GET", path, "kg_dev_carol", ""); r.StatusCode != http.StatusForbidden {
			t.Errorf("%s as a non-operator: %d, want 403", path, r.StatusCode)
		}
	}
}
