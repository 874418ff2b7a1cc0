package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/server/servertest"
)

// watchEvents opens an SSE watch (EventSource style: key in the query) and
// returns a reader; the request ends when the test does.
func watchEvents(t *testing.T, in *servertest.Instance, key, id string, headers ...string) (*servertest.SSEReader, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", in.URL+"/v1/kgent/sessions/"+id+"/events?api_key="+key, nil)
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("watch: status %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	stop := func() { cancel(); _ = resp.Body.Close() }
	t.Cleanup(stop)
	return servertest.NewSSEReader(resp.Body), stop
}

// readUntil reads events until one named name arrives (or the timeout).
func readUntil(t *testing.T, r *servertest.SSEReader, name string) []servertest.Event {
	t.Helper()
	done := make(chan struct{})
	var out []servertest.Event
	var err error
	go func() {
		defer close(done)
		for {
			var ev servertest.Event
			ev, err = r.Next()
			if err != nil {
				return
			}
			out = append(out, ev)
			if ev.Name == name {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatalf("no %q event within 15s; got %d events", name, len(out))
	}
	if err != nil {
		t.Fatalf("reading the watch: %v (after %v)", err, names(out))
	}
	return out
}

func names(evs []servertest.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Name
	}
	return out
}

func TestWatchLiveSameReplica(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	s := createSession(t, in, bob, `{}`)
	w, _ := watchEvents(t, in, bob, s.ID)

	turn := servertest.NewSSEReader(in.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"What is worth doing today?","mode":"explore"}`).Body).ReadAll(t)
	watched := readUntil(t, w, "complete")
	if fmt.Sprint(turn) != fmt.Sprint(watched) {
		t.Errorf("the watcher saw a different stream than the caller:\n caller  %v\n watcher %v", names(turn), names(watched))
	}
	// A non-streamed turn shows its message, mode change and complete (no chunks).
	resp, b := in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"and then?","mode":"advise","stream":false}`)
	mustStatus(t, resp, b, http.StatusOK)
	unary := readUntil(t, w, "complete")
	if strings.Join(names(unary), ",") != "message,mode,complete" {
		t.Errorf("unary turn as watched: %v", names(unary))
	}
	last, _ := strconv.Atoi(watched[len(watched)-1].ID)
	if first, _ := strconv.Atoi(unary[0].ID); first != last+1 {
		t.Errorf("ids not continuous across turns: %d then %d", last, first)
	}
	// Closing the session ends the watch.
	resp, b = in.Do(t, "DELETE", "/v1/kgent/sessions/"+s.ID, bob, "")
	mustStatus(t, resp, b, http.StatusOK)
	end := readUntil(t, w, "end")
	if d := end[len(end)-1].JSON(t); d["reason"] != "session_closed" {
		t.Errorf("end = %v", d)
	}
	if _, err := w.Next(); err == nil {
		t.Error("the watch stream should end after end")
	}
}

func TestWatchChecks(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "KGENTS_WATCHERS_PER_TENANT": "2"})
	s := createSession(t, in, bob, `{}`)
	cases := []struct {
		name, key, path string
		headers         []string
		want            int
	}{
		{"no key", "", "/v1/kgent/sessions/" + s.ID + "/events", nil, 401},
		{"other tenant", carol, "/v1/kgent/sessions/" + s.ID + "/events", nil, 404},
		{"bad id", bob, "/v1/kgent/sessions/nope/events", nil, 400},
		{"bad Last-Event-ID", bob, "/v1/kgent/sessions/" + s.ID + "/events", []string{"Last-Event-ID", "abc"}, 400},
	}
	for _, tc := range cases {
		resp, b := in.Do(t, "GET", tc.path, tc.key, "", tc.headers...)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.StatusCode, b, tc.want)
		}
	}
	// The per-tenant cap: two watchers open, the third is refused.
	watchEvents(t, in, bob, s.ID)
	watchEvents(t, in, bob, s.ID)
	resp, b := in.Do(t, "GET", "/v1/kgent/sessions/"+s.ID+"/events", bob, "")
	mustStatus(t, resp, b, http.StatusTooManyRequests)
	if resp.Header.Get("Retry-After") == "" {
		t.Error("no Retry-After on the watcher cap")
	}
	// Another tenant is not affected by bob's watchers.
	other := createSession(t, in, carol, `{}`)
	watchEvents(t, in, carol, other.ID)
}

// TestWatchEndsOnShutdown: watchers get end (reason shutdown) and the server
// still exits cleanly.
func TestWatchEndsOnShutdown(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "SHUTDOWN_DRAIN": "0.2"})
	s := createSession(t, in, bob, `{}`)
	w, _ := watchEvents(t, in, bob, s.ID)
	done := in.StopAsync()
	end := readUntil(t, w, "end")
	if d := end[len(end)-1].JSON(t); d["reason"] != "shutdown" {
		t.Errorf("end = %v", d)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("server did not stop")
	}
	_ = sessionsv1.SessionStatus_SESSION_STATUS_ACTIVE
}
