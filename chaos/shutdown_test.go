package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// SIGTERM while long turns stream, watchers follow, and history reads and
// short watches keep coming: the process exits 0 within SHUTDOWN_TIMEOUT;
// every turn's caller gets error{type: shutdown} (not a cut stream) and
// every watcher end{shutdown}; every read answered before the listener
// closed is a 200; the partial replies are stored and billed (their
// llm.tokens and session.message reach OpenMeter through the next
// replica), and the sessions take new turns at once on another replica.
func TestSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	sink := &usageSink{events: map[string]map[string]any{}}
	om := httptest.NewServer(sink)
	t.Cleanup(om.Close)
	const timeout = 4 * time.Second
	env := map[string]string{
		"NATS_SERVERS":             nats.URL(),
		"SOUL_CHUNK_DELAY":         "400ms", // a turn streams for ~10s: longer than the timeout
		"SHUTDOWN_TIMEOUT":         timeout.String(),
		"SHUTDOWN_DRAIN":           "500ms",
		"KGENTS_TIERS_FILE":        unlimitedTiers(t),
		"OPENMETER_ENABLED":        "true",
		"OPENMETER_BASE_URL":       om.URL,
		"OPENMETER_API_KEY":        "om-test",
		"OPENMETER_FLUSH_INTERVAL": "0.05",
	}
	r := startReplica(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	const n = 6
	ids := make([]string, n)
	for i := range ids {
		var s session
		if code, err := r.do(ctx, "POST", "/v1/kgent/sessions", bob, `{}`, &s); err != nil || code != 200 {
			t.Fatalf("create: %d %v", code, err)
		}
		ids[i] = s.ID
	}
	type outcome struct {
		kind, last string
		err        error
	}
	results := make(chan outcome, 2*n)
	var started sync.WaitGroup
	for _, id := range ids {
		turn, closeTurn, err := r.stream(ctx, "POST", "/v1/kgent/sessions/"+id+"/messages", bob, `{"message":"tell me a long story about shipping things"}`)
		if err != nil {
			t.Fatal(err)
		}
		watch, closeWatch, err := r.stream(ctx, "GET", "/v1/kgent/sessions/"+id+"/events", bob, "")
		if err != nil {
			t.Fatal(err)
		}
		started.Add(2)
		for _, s := range []struct {
			kind  string
			sse   *servertest.SSEReader
			close func()
		}{{"turn", turn, closeTurn}, {"watch", watch, closeWatch}} {
			go func() {
				defer s.close()
				var last servertest.Event
				first := true
				for {
					ev, err := s.sse.Next()
					if first {
						first = false
						started.Done()
					}
					if errors.Is(err, io.EOF) {
						desc := last.Name
						if last.Name == "error" || last.Name == "end" {
							m := last.JSON(t)
							desc += ":" + fmt.Sprint(m["type"], m["reason"])
						}
						results <- outcome{kind: s.kind, last: desc}
						return
					}
					if err != nil {
						results <- outcome{kind: s.kind, err: err}
						return
					}
					last = ev
				}
			}()
		}
	}
	started.Wait() // every stream has delivered its first event

	// More load until the process exits: history reads and short watches
	// (each opened with a replay from the start, read a little, left).
	var termSent atomic.Bool
	var load counts
	var loadWG sync.WaitGroup
	exited := make(chan struct{})
	for w := range 4 {
		loadWG.Add(1)
		go func() {
			defer loadWG.Done()
			for i := 0; ; i++ {
				select {
				case <-exited:
					return
				default:
				}
				id := ids[(w+i)%n]
				after := termSent.Load()
				if w%2 == 0 {
					var hist messages
					code, err := r.do(ctx, "GET", "/v1/kgent/sessions/"+id+"/messages?limit=20", bob, "", &hist)
					o := loadOutcome("read", code, err, after)
					load.add(o)
					if strings.HasSuffix(o, "no connection") && after {
						return // the listener is closed: nothing more to try
					}
					continue
				}
				sse, closeIt, err := r.stream(ctx, "GET", "/v1/kgent/sessions/"+id+"/events", bob, "", "Last-Event-ID", "0")
				if err != nil {
					o := loadOutcome("watch", 0, err, after)
					load.add(o)
					if strings.HasSuffix(o, "no connection") && after {
						return
					}
					continue
				}
				// Three events, or fewer ending in end{shutdown}: anything
				// else is a cut stream.
				var last servertest.Event
				for range 3 {
					ev, err := sse.Next()
					if errors.Is(err, io.EOF) && last.Name == "end" {
						break
					}
					if err != nil {
						load.add(fmt.Sprintf("watch cut after %q: %v", last.Name, err))
						last.Name = "cut"
						break
					}
					last = ev
				}
				closeIt()
				if last.Name != "cut" {
					load.add(loadOutcome("watch", http.StatusOK, nil, after))
				}
			}
		}()
	}
	eventually(t, 20*time.Second, "reads and watches under way", func() error {
		if c := load.snapshot(); c["read 200"] < 5 || c["watch 200"] < 5 {
			return fmt.Errorf("%v", c)
		}
		return nil
	})

	termSent.Store(true)
	took, err := r.term(15 * time.Second)
	close(exited)
	loadWG.Wait()
	if err != nil {
		t.Fatalf("exit after SIGTERM: %v (after %v)", err, took)
	}
	t.Logf("SIGTERM → exit 0 in %v (SHUTDOWN_TIMEOUT %v) with %d turns and %d watchers open, reads and short watches ongoing: %v",
		took.Round(time.Millisecond), timeout, n, n, load.snapshot())
	// kgentsd's own shutdown ends by the timeout (TestShutdownFitsTheTimeout
	// holds Serve to it); the tolerance is for what follows and is no work
	// of ours: the Go runtime's exit, the kernel reaping the process, and
	// this test's goroutine seeing it on a shared loaded machine.
	if tolerance := 250 * time.Millisecond; took > timeout+tolerance {
		t.Errorf("exit took %v, past SHUTDOWN_TIMEOUT %v (+%v for the process exit)", took, timeout, tolerance)
	}
	got := load.snapshot()
	for k, v := range got {
		// Before the signal everything answers 200; after it, a request
		// either is answered (200: reads and watches are served through
		// the drain, until the listener closes) or cannot connect.
		if !strings.HasSuffix(k, " 200") && !strings.HasSuffix(k, " after SIGTERM: no connection") {
			t.Errorf("%d× %s under load around the SIGTERM", v, k)
		}
	}
	if got["read after SIGTERM: 200"] == 0 {
		t.Errorf("no history read was answered during the drain: %v", got)
	}
	for range 2 * n {
		o := <-results
		switch {
		case o.err != nil:
			t.Errorf("%s stream cut: %v", o.kind, o.err)
		case o.kind == "turn" && o.last != "error:shutdown<nil>":
			t.Errorf("turn stream ended with %q, want error type shutdown", o.last)
		case o.kind == "watch" && o.last != "end:<nil>shutdown":
			t.Errorf("watch stream ended with %q, want end reason shutdown", o.last)
		}
	}

	// What the cut turns produced is stored and billed, and nothing
	// blocks the sessions.
	restarted := time.Now()
	nextEnv := maps.Clone(env)
	delete(nextEnv, "SOUL_CHUNK_DELAY") // its turns answer at once
	next := startReplica(t, nextEnv)
	t.Logf("next replica ready in %v", time.Since(restarted).Round(time.Millisecond))
	for _, id := range ids {
		var hist messages
		if code, err := next.do(ctx, "GET", "/v1/kgent/sessions/"+id+"/messages", bob, "", &hist); err != nil || code != 200 {
			t.Fatalf("history: %d %v", code, err)
		}
		if hist.Total != 2 || len(hist.Messages) != 2 || hist.Messages[1].Role != "assistant" || hist.Messages[1].Content == "" {
			t.Fatalf("history of a cut turn: %+v, want the user message and a partial reply", hist)
		}
		partial := hist.Messages[1].Content
		billed := eventually(t, 30*time.Second, "the cut turn's usage at OpenMeter", func() error {
			tokens := sink.find("llm.tokens", map[string]any{"session_id": id})
			reply := sink.find("session.message", map[string]any{"session_id": id, "role": "assistant"})
			if len(tokens) == 0 || len(reply) == 0 {
				return fmt.Errorf("llm.tokens %d, assistant session.message %d", len(tokens), len(reply))
			}
			if len(tokens) != 1 || len(reply) != 1 {
				t.Fatalf("the cut turn of %s billed more than once: llm.tokens %v, session.message %v", id, tokens, reply)
			}
			d := tokens[0]["data"].(map[string]any)
			if out, _ := d["tokens_out"].(float64); out <= 0 {
				t.Fatalf("the cut turn's llm.tokens bills no output: %v", d)
			}
			if l, _ := reply[0]["data"].(map[string]any)["message_length"].(float64); int(l) != utf8.RuneCountInString(partial) {
				t.Fatalf("the cut turn's session.message bills %v characters; the stored partial reply has %d", l, utf8.RuneCountInString(partial))
			}
			return nil
		})
		t.Logf("session %s: the cut turn's usage at OpenMeter after a further %v", id, billed.Round(time.Millisecond))
		if code, err := next.do(ctx, "POST", "/v1/kgent/sessions/"+id+"/messages", bob, `{"message":"next","stream":false}`, nil); err != nil || code != http.StatusOK {
			t.Fatalf("a new turn after the shutdown: %d %v", code, err)
		}
	}
}

// loadOutcome names a load request's result for counting: its status, or
// "no connection" when it could not reach the server, marked when it came
// after the SIGTERM.
func loadOutcome(kind string, code int, err error, afterTerm bool) string {
	out := fmt.Sprint(kind, " ", code)
	if err != nil {
		out = kind + " error: " + err.Error()
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			out = kind + " no connection"
		}
	}
	if afterTerm {
		out = strings.Replace(out, kind+" ", kind+" after SIGTERM: ", 1)
	}
	return out
}
