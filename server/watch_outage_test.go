package server_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/kgents/kgents-go/server/servertest"
)

// A watch opened while NATS is unreachable cannot read the session's
// history: it is refused with 503 and Retry-After (never a silent gap), and
// works again once NATS is back. A Last-Event-ID beyond anything the
// session reached gets a reset and the whole history.
func TestWatchHistoryUnavailableAndUnknownResumePoint(t *testing.T) {
	t.Parallel()
	nats, a, _ := twoReplicas(t, nil)
	s := createSession(t, a, bob, `{}`)
	r, body := a.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"hello","stream":false}`)
	mustStatus(t, r, body, http.StatusOK)

	nats.Stop()
	// Bounded: a watch that silently goes on without its history may
	// never answer at all.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", a.URL+"/v1/kgent/sessions/"+s.ID+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", bob)
	r, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("watch during a NATS outage: %v, want 503 with Retry-After (no answer: the watch waits without its history)", err)
	}
	if r.StatusCode != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		_ = r.Body.Close()
		t.Fatalf("watch during a NATS outage: %d (Retry-After %q), want 503 with Retry-After", r.StatusCode, r.Header.Get("Retry-After"))
	}
	_ = r.Body.Close()
	cancel()
	nats.Restart()

	resp := a.Stream(t, "GET", "/v1/kgent/sessions/"+s.ID+"/events", bob, "", "Last-Event-ID", "999")
	defer func() { _ = resp.Body.Close() }()
	// Bounded: a watch waiting for events after 999 would wait for ever.
	giveUp := time.AfterFunc(15*time.Second, func() { _ = resp.Body.Close() })
	defer giveUp.Stop()
	sse := servertest.NewSSEReader(resp.Body)
	first, err := sse.Next()
	if err != nil {
		t.Fatalf("watch resuming after id 999 of a session at id 3: %v, want a reset at once (no event within 15 s)", err)
	}
	if first.Name != "reset" {
		t.Fatalf("watch resuming after id 999 of a session at id %d: first event %s, want reset", 3, first.Name)
	}
	if next, err := sse.Next(); err != nil || next.ID != "1" || next.Name != "message" {
		t.Fatalf("after the reset: %+v %v, want event 1 (message)", next, err)
	}
}
