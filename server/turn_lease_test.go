package server_test

import (
	"net/http"
	"testing"

	"github.com/kgents/kgents-go/server/servertest"
)

// A turn that runs far longer than its lease keeps the session: the lease
// is renewed while it runs, so a send meanwhile is 409 (not a takeover),
// and the turn completes normally.
func TestTurnLeaseRenewedWhileRunning(t *testing.T) {
	t.Parallel()
	_, a, b := twoReplicas(t, map[string]string{"KGENTS_TURN_LEASE": "300ms", "SOUL_CHUNK_DELAY": "60ms"})
	s := createSession(t, a, bob, `{}`)
	resp := a.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"a long answer, please, about many things at once"}`)
	defer func() { _ = resp.Body.Close() }()
	sse := servertest.NewSSEReader(resp.Body)
	chunks := 0
	for chunks < 12 { // ≥ 700 ms in: more than two leases
		ev, err := sse.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Name == "chunk" {
			chunks++
		}
		if ev.Name == "complete" || ev.Name == "error" {
			t.Fatalf("turn ended after %d chunks; make it longer", chunks)
		}
	}
	r, body := b.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"me too","stream":false}`)
	mustStatus(t, r, body, http.StatusConflict)
	evs := sse.ReadAll(t)
	if last := evs[len(evs)-1]; last.Name != "complete" {
		t.Fatalf("the long turn ended with %s %s, want complete", last.Name, last.Data)
	}
	if got := getSession(t, b, bob, s.ID); got.MessageCount != 2 {
		t.Fatalf("message_count %d after one turn, want 2", got.MessageCount)
	}
}
