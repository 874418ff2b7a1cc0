package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

const bob = "kg_dev_bob"

// A replica killed (-9) in the middle of a streamed turn: the session takes
// the next turn on another replica within the lease, the dead turn is
// marked interrupted for history and watchers, what it served is stored,
// message_count is right, and the next turn's event ids are fresh and
// increasing.
func TestKillReplicaMidTurn(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	sink := &usageSink{events: map[string]map[string]any{}}
	om := httptest.NewServer(sink)
	t.Cleanup(om.Close)
	env := map[string]string{
		"NATS_SERVERS":             nats.URL(),
		"SOUL_CHUNK_DELAY":         "150ms",
		"KGENTS_TURN_LEASE":        "1s",
		"OPENMETER_ENABLED":        "true",
		"OPENMETER_BASE_URL":       om.URL,
		"OPENMETER_API_KEY":        "om-test",
		"OPENMETER_FLUSH_INTERVAL": "0.05",
	}
	a, b := startReplica(t, env), startReplica(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	var sess session
	if code, err := a.do(ctx, "POST", "/v1/kgent/sessions", bob, `{"title":"kill me"}`, &sess); err != nil || code != 200 {
		t.Fatalf("create: %d %v", code, err)
	}
	watch, closeWatch, err := b.stream(ctx, "GET", "/v1/kgent/sessions/"+sess.ID+"/events", bob, "")
	if err != nil {
		t.Fatal(err)
	}
	defer closeWatch()
	watched := make(chan servertest.Event, 1024)
	go func() {
		defer close(watched)
		for {
			ev, err := watch.Next()
			if err != nil {
				return
			}
			watched <- ev
		}
	}()

	turn, closeTurn, err := a.stream(ctx, "POST", "/v1/kgent/sessions/"+sess.ID+"/messages", bob,
		`{"message":"I want to rewrite everything in Rust, tell me why I should not"}`)
	if err != nil {
		t.Fatal(err)
	}
	var served strings.Builder
	var lastID uint64
	for chunks := 0; chunks < 3; {
		ev, err := turn.Next()
		if err != nil {
			t.Fatalf("turn stream ended early: %v", err)
		}
		lastID, _ = strconv.ParseUint(ev.ID, 10, 64)
		if ev.Name == "chunk" {
			served.WriteString(ev.JSON(t)["text"].(string))
			chunks++
		}
		if ev.Name == "complete" {
			t.Fatal("the turn completed before the kill; slow it down")
		}
	}
	a.kill()
	closeTurn()

	// The next send waits out the lease (409 meanwhile), then succeeds.
	took := eventually(t, 15*time.Second, "next turn after the kill", func() error {
		var reply message
		code, err := b.do(ctx, "POST", "/v1/kgent/sessions/"+sess.ID+"/messages", bob, `{"message":"again","stream":false}`, &reply)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			if code != http.StatusConflict {
				t.Fatalf("send after kill: %d, want 409 then 200", code)
			}
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
	t.Logf("session took the next turn %v after the kill (lease 1s)", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("session blocked %v after a kill with a 1s lease", took)
	}

	var hist messages
	if code, err := b.do(ctx, "GET", "/v1/kgent/sessions/"+sess.ID+"/messages", bob, "", &hist); err != nil || code != 200 {
		t.Fatalf("history: %d %v", code, err)
	}
	roles := make([]string, len(hist.Messages))
	for i, m := range hist.Messages {
		roles[i] = m.Role
	}
	if strings.Join(roles, ",") != "user,assistant,user,assistant" || hist.Total != 4 {
		t.Fatalf("history roles %v total %d, want user,assistant,user,assistant / 4", roles, hist.Total)
	}
	if partial := hist.Messages[1].Content; !strings.HasPrefix(partial, served.String()) {
		t.Errorf("stored partial reply %q does not start with what the caller was served %q", partial, served.String())
	}
	var got session
	if code, err := b.do(ctx, "GET", "/v1/kgent/sessions/"+sess.ID, bob, "", &got); err != nil || code != 200 || got.MessageCount != 4 {
		t.Fatalf("session after recovery: %+v %d %v, want message_count 4", got, code, err)
	}

	// The watcher saw the dead turn end as interrupted, then the new turn,
	// with ids that only increase.
	var seq []string
	var prev uint64
	deadline := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case ev, ok := <-watched:
			if !ok {
				t.Fatal("watch ended")
			}
			id, _ := strconv.ParseUint(ev.ID, 10, 64)
			if id <= prev {
				t.Fatalf("event id %d after %d: ids must increase", id, prev)
			}
			prev = id
			name := ev.Name
			if name == "error" {
				name += ":" + ev.JSON(t)["type"].(string)
			}
			if name != "chunk" {
				seq = append(seq, name)
			}
			done = ev.Name == "complete"
		case <-deadline:
			t.Fatalf("watcher saw %v, no final complete", seq)
		}
	}
	if want := "message,error:interrupted,message,complete"; strings.Join(seq, ",") != want {
		t.Fatalf("watcher saw %v, want %s", seq, want)
	}
	if prev <= lastID {
		t.Fatalf("new turn's ids (%d) did not move past the dead turn's (%d)", prev, lastID)
	}

	// A later reader sees it too: a watch replaying from the start gets
	// the same ending from the event history, not only the live watcher.
	replayed, closeReplay, err := b.stream(ctx, "GET", "/v1/kgent/sessions/"+sess.ID+"/events", bob, "", "Last-Event-ID", "0")
	if err != nil {
		t.Fatal(err)
	}
	defer closeReplay()
	var again []string
	var prevAgain uint64
	for {
		ev, err := replayed.Next()
		if err != nil {
			t.Fatalf("replay from 0 ended after %v: %v", again, err)
		}
		id, _ := strconv.ParseUint(ev.ID, 10, 64)
		if id <= prevAgain {
			t.Fatalf("replayed event id %d after %d: ids must increase", id, prevAgain)
		}
		prevAgain = id
		name := ev.Name
		if name == "error" {
			name += ":" + ev.JSON(t)["type"].(string)
		}
		if name != "chunk" {
			again = append(again, name)
		}
		if ev.Name == "complete" {
			break
		}
	}
	if want := "message,error:interrupted,message,complete"; strings.Join(again, ",") != want {
		t.Fatalf("a replay from 0 after the recovery shows %v, want %s", again, want)
	}

	// What the dead turn served is billed: its tokens (model interrupted,
	// as many as the stored partial reply) and its stored message, once.
	partial := hist.Messages[1]
	eventually(t, 30*time.Second, "the interrupted turn's usage at OpenMeter", func() error {
		tokens := sink.find("llm.tokens", map[string]any{"session_id": sess.ID, "model": "interrupted"})
		var reply []map[string]any
		for _, e := range sink.find("session.message", map[string]any{"session_id": sess.ID, "role": "assistant"}) {
			if int(e["data"].(map[string]any)["message_length"].(float64)) == utf8.RuneCountInString(partial.Content) {
				reply = append(reply, e)
			}
		}
		if len(tokens) == 0 || len(reply) == 0 {
			return fmt.Errorf("llm.tokens (interrupted) %d, session.message of the partial reply %d", len(tokens), len(reply))
		}
		if len(tokens) != 1 || len(reply) != 1 {
			t.Fatalf("the interrupted turn is billed more than once: %v %v", tokens, reply)
		}
		if out := tokens[0]["data"].(map[string]any)["tokens_out"].(float64); int(out) != partial.TokensUsed || out <= 0 {
			t.Fatalf("the interrupted turn's llm.tokens bills %v tokens out; the stored partial reply has %d", out, partial.TokensUsed)
		}
		return nil
	})
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("test ran out of time")
	}
}
