package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/streaming/natstest"
)

func twoReplicas(t *testing.T, extra map[string]string) (*natstest.Server, *servertest.Instance, *servertest.Instance) {
	t.Helper()
	nats := natstest.Start(t)
	env := map[string]string{"NATS_SERVERS": nats.URL()}
	for k, v := range extra {
		env[k] = v
	}
	env["KGENTS_REPLICA_NAME"] = "a"
	a := servertest.Start(t, env)
	env["KGENTS_REPLICA_NAME"] = "b"
	b := servertest.Start(t, env)
	return nats, a, b
}

func eventString(evs []servertest.Event) string {
	var sb strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&sb, "%s:%s:%s\n", e.ID, e.Name, e.Data)
	}
	return sb.String()
}

// TestWatchAcrossReplicas: a turn on A is watched live on B, event for event.
func TestWatchAcrossReplicas(t *testing.T) {
	t.Parallel()
	_, a, b := twoReplicas(t, map[string]string{"SOUL_CHUNK_DELAY": "5ms"})
	s := createSession(t, a, bob, `{}`)
	w, _ := watchEvents(t, b, bob, s.ID)
	turn := servertest.NewSSEReader(a.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"Tell me how to pace a long project","mode":"advise"}`).Body).ReadAll(t)
	watched := readUntil(t, w, "complete")
	if eventString(turn) != eventString(watched) {
		t.Errorf("B's watcher saw a different turn:\n caller:\n%s watcher:\n%s", eventString(turn), eventString(watched))
	}
}

// TestWatchResume: reconnecting with Last-Event-ID (or ?after=) continues
// exactly after that event, from history, on either replica.
func TestWatchResume(t *testing.T) {
	t.Parallel()
	_, a, b := twoReplicas(t, nil)
	s := createSession(t, a, bob, `{}`)
	turn1 := servertest.NewSSEReader(a.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"First: what matters most?","mode":"reflect"}`).Body).ReadAll(t)
	turn2 := servertest.NewSSEReader(a.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"Second: and after that?","mode":"explore"}`).Body).ReadAll(t)
	all := append(append([]servertest.Event{}, turn1...), turn2...)

	for _, cut := range []int{0, 3, len(turn1) - 1, len(turn1), len(all) - 2} {
		for i, in := range []*servertest.Instance{a, b} {
			var headers []string
			if cut > 0 {
				headers = []string{"Last-Event-ID", all[cut-1].ID}
			}
			w, stop := watchEvents(t, in, bob, s.ID, headers...)
			got := readUntilN(t, w, len(all)-cut)
			stop()
			if eventString(got) != eventString(all[cut:]) {
				t.Errorf("replica %d resuming after %d events:\n got:\n%s want:\n%s", i, cut, eventString(got), eventString(all[cut:]))
			}
		}
	}
	// ?after= works like Last-Event-ID, and the header wins over it.
	resp := a.Stream(t, "GET", "/v1/kgent/sessions/"+s.ID+"/events?after="+all[2].ID, bob, "", "Last-Event-ID", all[4].ID)
	if got := readUntilN(t, servertest.NewSSEReader(resp.Body), 1); got[0].ID != all[5].ID {
		t.Errorf("header should win: first event %s, want %s", got[0].ID, all[5].ID)
	}
}

// readUntilN reads exactly n events.
func readUntilN(t *testing.T, r *servertest.SSEReader, n int) []servertest.Event {
	t.Helper()
	out := make([]servertest.Event, 0, n)
	done := make(chan error, 1)
	go func() {
		for len(out) < n {
			ev, err := r.Next()
			if err != nil {
				done <- err
				return
			}
			out = append(out, ev)
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after %d of %d events: %v", len(out), n, err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("only %d of %d events within 15s", len(out), n)
	}
	return out
}

// TestWatchReset: resuming from an event no longer retained restarts from
// the oldest retained one, announced by a reset event.
func TestWatchReset(t *testing.T) {
	t.Parallel()
	nats, a, _ := twoReplicas(t, nil)
	s := createSession(t, a, bob, `{}`)
	events := servertest.NewSSEReader(a.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"Something long enough to have chunks to purge"}`).Body).ReadAll(t)
	// Age out the first five events of the session (as the 7-day limit would).
	_, js := nats.Connect(t)
	ctx := context.Background()
	stream, err := js.Stream(ctx, streaming.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	var seq uint64
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := stream.Info(ctx, jetstream.WithSubjectFilter(streaming.SessionFilter(s.ID)))
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, c := range info.State.Subjects {
			n += c
		}
		if n == uint64(len(events)) {
			seq = info.State.FirstSeq
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream holds %d of %d events", n, len(events))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every event of the turn says when its turn began (what a resume
	// reads from), the same time on all.
	began := map[string]int{}
	if _, _, err := streaming.ReadFrom(ctx, js, streaming.EventsStream, streaming.SessionFilter(s.ID), 1, len(events), func(m *jetstream.RawStreamMsg) bool {
		began[m.Header.Get(streaming.HeaderTurnStarted)]++
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if len(began) != 1 || began[""] != 0 {
		t.Errorf("the turn's events say it began at %v, want one time on all %d", began, len(events))
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(seq+5)); err != nil {
		t.Fatal(err)
	}
	w, _ := watchEvents(t, a, bob, s.ID, "Last-Event-ID", events[1].ID)
	got := readUntilN(t, w, 1+len(events)-5)
	if got[0].Name != "reset" || got[0].ID != "" {
		t.Fatalf("first event %+v, want reset", got[0])
	}
	if eventString(got[1:]) != eventString(events[5:]) {
		t.Errorf("after reset:\n%s want\n%s", eventString(got[1:]), eventString(events[5:]))
	}
}

// TestHundredWatchers: 100 watchers on B all receive every event of a turn
// on A, in order.
func TestHundredWatchers(t *testing.T) {
	t.Parallel()
	_, a, b := twoReplicas(t, map[string]string{"KGENTS_WATCHERS_PER_TENANT": "1000"})
	s := createSession(t, a, bob, `{}`)
	const n = 100
	readers := make([]*servertest.SSEReader, n)
	for i := range readers {
		readers[i], _ = watchEvents(t, b, bob, s.ID)
	}
	turn := servertest.NewSSEReader(a.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"Everyone is listening: say something useful about focus","mode":"advise"}`).Body).ReadAll(t)
	want := eventString(turn)
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i, r := range readers {
		wg.Add(1)
		go func(i int, r *servertest.SSEReader) {
			defer wg.Done()
			if got := eventString(readUntilN(t, r, len(turn))); got != want {
				errs <- fmt.Sprintf("watcher %d differs", i)
			}
		}(i, r)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestNATSOutageMidReply: NATS dies while a reply streams. The caller still
// gets its reply; a watcher on the same replica keeps receiving (in-process
// hub); a session the replica has not cached answers 503; once NATS is back
// the spooled writes land — the reply is in the history and every event is
// in the stream exactly once.
func TestNATSOutageMidReply(t *testing.T) {
	t.Parallel()
	nats, a, b := twoReplicas(t, map[string]string{"SOUL_CHUNK_DELAY": "40ms"})
	s := createSession(t, a, bob, `{}`)
	other := createSession(t, a, bob, `{}`) // cached on A only
	w, _ := watchEvents(t, a, bob, s.ID)

	resp := a.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob,
		`{"message":"Please give me a thoughtful and reasonably long answer about planning under uncertainty","mode":"explore"}`)
	caller := servertest.NewSSEReader(resp.Body)
	var got []servertest.Event
	for len(got) < 3 {
		ev, err := caller.Next()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev)
	}
	nats.Stop()

	rest := caller.ReadAll(t)
	got = append(got, rest...)
	if got[len(got)-1].Name != "complete" {
		t.Fatalf("the caller's reply did not complete during the outage: %v", names(got))
	}
	watched := readUntil(t, w, "complete")
	if eventString(watched) != eventString(got) {
		t.Errorf("the same-replica watcher missed events during the outage:\n%s vs\n%s", eventString(watched), eventString(got))
	}

	// Health says so, without taking the replica out of rotation.
	_, body := a.Do(t, "GET", "/health/saas", "", "")
	var saas struct {
		Status string `json:"status"`
		NATS   struct {
			Status     string `json:"status"`
			Mode       string `json:"mode"`
			SpoolDepth int    `json:"spool_depth"`
		} `json:"nats"`
	}
	if err := json.Unmarshal(body, &saas); err != nil {
		t.Fatal(err)
	}
	if saas.Status != "degraded" || saas.NATS.Mode != "fallback" || saas.NATS.SpoolDepth == 0 {
		t.Errorf("/health/saas during the outage: %s", body)
	}
	if r, _ := a.Do(t, "GET", "/readyz", "", ""); r.StatusCode != 200 {
		t.Errorf("/readyz during a NATS outage: %d, want 200", r.StatusCode)
	}
	// B never touched `other`: it cannot serve it now.
	r, b503 := b.Do(t, "GET", "/v1/kgent/sessions/"+other.ID, bob, "")
	if r.StatusCode != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Errorf("uncached session during the outage: %d %s (Retry-After %q)", r.StatusCode, b503, r.Header.Get("Retry-After"))
	}
	// Soul keeps working.
	r, body = a.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"still there?"}`)
	mustStatus(t, r, body, http.StatusOK)

	nats.Restart()
	for _, in := range []*servertest.Instance{a, b} {
		deadline := time.Now().Add(20 * time.Second)
		for {
			_, body := in.Do(t, "GET", "/health/saas", "", "")
			_ = json.Unmarshal(body, &saas)
			if saas.NATS.Status == "healthy" && saas.NATS.SpoolDepth == 0 && saas.NATS.Mode == "jetstream" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("did not recover: %s", body)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// The reply is in the history, once — from the other replica too.
	page := listMessages(t, b, bob, s.ID)
	if page.Total != 2 || page.Messages[1].Role != "assistant" || page.Messages[1].Content != got[len(got)-1].JSON(t)["text"] {
		t.Errorf("history after recovery: %+v", page)
	}
	if got := getSession(t, b, bob, s.ID); got.MessageCount != 2 {
		t.Errorf("session record after recovery: %+v", got)
	}
	// Every event is in the stream exactly once: a fresh watcher replays them all.
	w2, _ := watchEvents(t, b, bob, s.ID)
	replay := readUntilN(t, w2, len(got))
	if eventString(replay) != eventString(got) {
		t.Errorf("replayed history differs:\n%s vs\n%s", eventString(replay), eventString(got))
	}
	_, js := nats.Connect(t)
	st, _ := js.Stream(context.Background(), streaming.EventsStream)
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(streaming.SessionFilter(s.ID)))
	if err != nil {
		t.Fatal(err)
	}
	var stored uint64
	for _, c := range info.State.Subjects {
		stored += c
	}
	if stored != uint64(len(got)) {
		t.Errorf("the events stream holds %d events of the turn, want %d (each once)", stored, len(got))
	}
	last, _ := strconv.Atoi(got[len(got)-1].ID)
	if last != len(got) {
		t.Errorf("event ids should run 1..%d, last is %d", len(got), last)
	}
}
