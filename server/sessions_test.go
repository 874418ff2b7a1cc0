package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

const (
	bob   = "kg_dev_bob"   // PRO, read+write, tenant …0001
	alice = "kg_dev_alice" // FREE, read only, tenant …0002
	carol = "kg_dev_carol" // ENTERPRISE, read+write+admin, tenant …0003
)

type session struct {
	ID            string  `json:"id"`
	TenantID      string  `json:"tenant_id"`
	Title         *string `json:"title"`
	AgentType     string  `json:"agent_type"`
	Status        string  `json:"status"`
	Mode          string  `json:"mode"`
	MessageCount  int     `json:"message_count"`
	TokensUsed    int     `json:"tokens_used"`
	CreatedAt     string  `json:"created_at"`
	LastMessageAt *string `json:"last_message_at"`
}

type message struct {
	ID         string `json:"id"`
	SessionID  string `json:"session_id"`
	Role       string `json:"role"`
	Content    string `json:"content"`
	TokensUsed int    `json:"tokens_used"`
	CreatedAt  string `json:"created_at"`
}

type messagesPage struct {
	Messages  []message `json:"messages"`
	Total     int       `json:"total"`
	SessionID string    `json:"session_id"`
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decoding %T: %v: %s", v, err, b)
	}
	return v
}

func mustStatus(t *testing.T, resp *http.Response, body []byte, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("%s %s: status %d, want %d: %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, want, body)
	}
}

func createSession(t *testing.T, in *servertest.Instance, key, body string) session {
	t.Helper()
	resp, b := in.Do(t, "POST", "/v1/kgent/sessions", key, body)
	mustStatus(t, resp, b, http.StatusOK)
	return decode[session](t, b)
}

func TestSessionsREST(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, nil)

	t.Run("create needs write scope", func(t *testing.T) {
		t.Parallel()
		resp, b := in.Do(t, "POST", "/v1/kgent/sessions", alice, `{"title":"x"}`)
		mustStatus(t, resp, b, http.StatusForbidden)
		if !strings.Contains(decodeErr(t, b).Detail, "write") {
			t.Errorf("detail does not mention write: %s", b)
		}
	})
	t.Run("create with title and mode", func(t *testing.T) {
		t.Parallel()
		s := createSession(t, in, bob, `{"title":"Planning","mode":"CHALLENGE","observer":{"ignored":true}}`)
		if s.ID == "" || s.Title == nil || *s.Title != "Planning" || s.AgentType != "kgent" || s.Status != "active" || s.Mode != "challenge" {
			t.Errorf("session = %+v", s)
		}
		if s.TenantID != "00000000-0000-0000-0000-000000000001" || s.LastMessageAt != nil || !strings.HasSuffix(s.CreatedAt, "+00:00") {
			t.Errorf("session = %+v", s)
		}
	})
	t.Run("create with defaults", func(t *testing.T) {
		t.Parallel()
		s := createSession(t, in, bob, `{}`)
		if s.AgentType != "kgent" || s.MessageCount != 0 || s.TokensUsed != 0 || s.Mode != "reflect" || s.Title != nil {
			t.Errorf("session = %+v", s)
		}
		s = createSession(t, in, bob, ``) // no body at all
		if s.Mode != "reflect" {
			t.Errorf("session = %+v", s)
		}
	})
	// Not parallel: it counts carol's sessions, which parallel subtests
	// create (they wait until the sequential ones are done).
	t.Run("create rejects bad input and stores nothing", func(t *testing.T) {
		before := countSessions(t, in, carol)
		for _, body := range []string{`{"mode":"sing"}`, `{"agent_type":"other"}`, `{"title":"` + strings.Repeat("x", 201) + `"}`} {
			resp, b := in.Do(t, "POST", "/v1/kgent/sessions", carol, body)
			mustStatus(t, resp, b, http.StatusBadRequest)
		}
		if after := countSessions(t, in, carol); after != before {
			t.Errorf("bad creates stored sessions: %d -> %d", before, after)
		}
	})
	t.Run("list is paged, newest first, own tenant only", func(t *testing.T) {
		t.Parallel()
		key := "kg_dev_carol"
		var ids []string
		for i := 0; i < 3; i++ {
			ids = append(ids, createSession(t, in, key, fmt.Sprintf(`{"title":"page %d"}`, i)).ID)
			time.Sleep(2 * time.Millisecond)
		}
		resp, b := in.Do(t, "GET", "/v1/kgent/sessions?limit=2", key, "")
		mustStatus(t, resp, b, http.StatusOK)
		page := decode[struct {
			Sessions []session `json:"sessions"`
			Total    int       `json:"total"`
		}](t, b)
		if len(page.Sessions) != 2 || page.Total < 3 || page.Sessions[0].ID != ids[2] || page.Sessions[1].ID != ids[1] {
			t.Errorf("page = %+v (ids %v)", page, ids)
		}
		for _, s := range page.Sessions {
			if s.TenantID != "00000000-0000-0000-0000-000000000003" {
				t.Errorf("foreign session listed: %+v", s)
			}
		}
		resp, b = in.Do(t, "GET", "/v1/kgent/sessions?limit=2&offset=1", key, "")
		mustStatus(t, resp, b, http.StatusOK)
		if p := decode[struct {
			Sessions []session `json:"sessions"`
		}](t, b); len(p.Sessions) != 2 || p.Sessions[0].ID != ids[1] {
			t.Errorf("offset page = %+v", p)
		}
	})
	t.Run("get", func(t *testing.T) {
		t.Parallel()
		s := createSession(t, in, bob, `{"title":"get me"}`)
		resp, b := in.Do(t, "GET", "/v1/kgent/sessions/"+s.ID, bob, "")
		mustStatus(t, resp, b, http.StatusOK)
		if got := decode[session](t, b); got.ID != s.ID || *got.Title != "get me" {
			t.Errorf("got %+v", got)
		}
		resp, b = in.Do(t, "GET", "/v1/kgent/sessions/0b6e3c1e-8f8e-4a43-9b9e-0c6a1d2f3e4a", bob, "")
		mustStatus(t, resp, b, http.StatusNotFound)
		if decodeErr(t, b).Detail != "Session not found" {
			t.Errorf("404 body %s", b)
		}
		resp, b = in.Do(t, "GET", "/v1/kgent/sessions/not-a-uuid", bob, "")
		mustStatus(t, resp, b, http.StatusBadRequest)
		// Another tenant's session is not found, also for messages and sends.
		for _, req := range []struct{ method, path, body string }{
			{"GET", "/v1/kgent/sessions/" + s.ID, ""},
			{"GET", "/v1/kgent/sessions/" + s.ID + "/messages", ""},
			{"DELETE", "/v1/kgent/sessions/" + s.ID, ""},
			{"POST", "/v1/kgent/sessions/" + s.ID + "/messages", `{"message":"hi","stream":false}`},
		} {
			resp, b := in.Do(t, req.method, req.path, carol, req.body)
			mustStatus(t, resp, b, http.StatusNotFound)
		}
	})
	t.Run("send message without streaming", func(t *testing.T) {
		t.Parallel()
		s := createSession(t, in, bob, `{}`)
		resp, b := in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", alice, `{"message":"hi","stream":false}`)
		mustStatus(t, resp, b, http.StatusForbidden)
		resp, b = in.Do(t, "POST", "/v1/kgent/sessions/0b6e3c1e-8f8e-4a43-9b9e-0c6a1d2f3e4a/messages", bob, `{"message":"hi","stream":false}`)
		mustStatus(t, resp, b, http.StatusNotFound)
		resp, b = in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"What should I build next?","stream":false}`)
		mustStatus(t, resp, b, http.StatusOK)
		m := decode[message](t, b)
		if m.Role != "assistant" || m.Content == "" || m.SessionID != s.ID || m.ID == "" {
			t.Errorf("reply = %+v", m)
		}
		got := getSession(t, in, bob, s.ID)
		if got.MessageCount != 2 || got.TokensUsed != m.TokensUsed || got.LastMessageAt == nil {
			t.Errorf("session after a turn = %+v (reply tokens %d)", got, m.TokensUsed)
		}
		page := listMessages(t, in, bob, s.ID)
		if page.Total != 2 || page.SessionID != s.ID || page.Messages[0].Role != "user" || page.Messages[1].ID != m.ID {
			t.Errorf("history = %+v", page)
		}
	})
	t.Run("invalid input to a send stores nothing", func(t *testing.T) {
		t.Parallel()
		s := createSession(t, in, bob, `{}`)
		for _, body := range []string{
			`{"message":"hi","mode":"loud","stream":false}`,
			`{"message":"hi","mode":"loud"}`,
			`{"message":"hi","budget":"huge"}`,
			`{"message":"` + strings.Repeat("m", 32*1024+1) + `"}`,
		} {
			resp, b := in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, body)
			mustStatus(t, resp, b, http.StatusBadRequest)
			if strings.Contains(body, "loud") && !strings.Contains(decodeErr(t, b).Detail, "mode") {
				t.Errorf("detail does not mention mode: %s", b)
			}
		}
		// A budget above the tier (PRO may not use deep) is 403, also before anything is stored.
		resp, b := in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"hi","budget":"deep"}`)
		mustStatus(t, resp, b, http.StatusForbidden)
		if p := listMessages(t, in, bob, s.ID); p.Total != 0 || len(p.Messages) != 0 {
			t.Errorf("rejected sends stored messages: %+v", p)
		}
	})
	t.Run("close", func(t *testing.T) {
		t.Parallel()
		s := createSession(t, in, bob, `{}`)
		resp, b := in.Do(t, "DELETE", "/v1/kgent/sessions/"+s.ID, bob, "")
		mustStatus(t, resp, b, http.StatusOK)
		if got := decode[session](t, b); got.Status != "closed" {
			t.Errorf("closed session = %+v", got)
		}
		resp, b = in.Do(t, "DELETE", "/v1/kgent/sessions/"+s.ID, bob, "")
		mustStatus(t, resp, b, http.StatusOK)
		for _, body := range []string{`{"message":"hi","stream":false}`, `{"message":"hi"}`} {
			resp, b = in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, body)
			mustStatus(t, resp, b, http.StatusConflict)
			if ra := resp.Header.Get("Retry-After"); ra != "" {
				t.Errorf("a closed session's 409 has Retry-After %q: retrying cannot help", ra)
			}
		}
		if got := getSession(t, in, bob, s.ID); got.Status != "closed" || got.MessageCount != 0 {
			t.Errorf("after close = %+v", got)
		}
	})
	t.Run("empty history", func(t *testing.T) {
		t.Parallel()
		s := createSession(t, in, bob, `{}`)
		p := listMessages(t, in, bob, s.ID)
		if p.Total != 0 || p.Messages == nil || len(p.Messages) != 0 {
			t.Errorf("empty history = %+v", p)
		}
	})
}

func countSessions(t *testing.T, in *servertest.Instance, key string) int {
	t.Helper()
	resp, b := in.Do(t, "GET", "/v1/kgent/sessions", key, "")
	mustStatus(t, resp, b, http.StatusOK)
	return decode[struct {
		Total int `json:"total"`
	}](t, b).Total
}

func getSession(t *testing.T, in *servertest.Instance, key, id string) session {
	t.Helper()
	resp, b := in.Do(t, "GET", "/v1/kgent/sessions/"+id, key, "")
	mustStatus(t, resp, b, http.StatusOK)
	return decode[session](t, b)
}

func listMessages(t *testing.T, in *servertest.Instance, key, id string) messagesPage {
	t.Helper()
	resp, b := in.Do(t, "GET", "/v1/kgent/sessions/"+id+"/messages", key, "")
	mustStatus(t, resp, b, http.StatusOK)
	return decode[messagesPage](t, b)
}

// TestStreamedTurn checks the SSE form of a turn: headers, the heartbeat
// that opens it, the event sequence, and that complete's message is stored.
func TestStreamedTurn(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, nil)
	s := createSession(t, in, bob, `{"mode":"reflect"}`)

	for _, path := range []string{"/messages", "/messages:stream"} {
		resp := in.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+path, bob, `{"message":"I keep polishing the interface instead of shipping","mode":"challenge"}`,
			"Accept", "application/json") // SSE routes answer SSE whatever Accept says
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", path, resp.StatusCode)
		}
		for h, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
			if got := resp.Header.Get(h); got != want {
				t.Errorf("%s: %s = %q, want %q", path, h, got, want)
			}
		}
		r := servertest.NewSSEReader(resp.Body)
		events := r.ReadAll(t)
		if r.Comments < 1 {
			t.Errorf("%s: no heartbeat comment", path)
		}
		var names []string
		var text strings.Builder
		lastID := 0
		for i, ev := range events {
			names = append(names, ev.Name)
			var id int
			if _, err := fmt.Sscan(ev.ID, &id); err != nil || id <= lastID {
				t.Errorf("%s: event %d id %q not increasing after %d", path, i, ev.ID, lastID)
			}
			lastID = id
			if ev.Name == "chunk" {
				d := ev.JSON(t)
				text.WriteString(d["text"].(string))
				if int(d["index"].(float64)) != countOf(names, "chunk")-1 {
					t.Errorf("%s: chunk index %v", path, d["index"])
				}
			}
		}
		if names[0] != "message" || names[len(names)-1] != "complete" || countOf(names, "chunk") == 0 {
			t.Fatalf("%s: events %v", path, names)
		}
		if path == "/messages" && (len(names) < 2 || names[1] != "mode") {
			t.Errorf("first turn switching to challenge should announce the mode: %v", names)
		}
		if path == "/messages:stream" && countOf(names, "mode") != 0 {
			t.Errorf("mode did not change, yet: %v", names)
		}
		complete := events[len(events)-1].JSON(t)
		if complete["text"] != text.String() || int(complete["chunks"].(float64)) != countOf(names, "chunk") || complete["mode"] != "challenge" {
			t.Errorf("%s: complete %v vs chunks %q", path, complete, text.String())
		}
		page := listMessages(t, in, bob, s.ID)
		last := page.Messages[len(page.Messages)-1]
		if last.ID != complete["message_id"] || last.Content != text.String() {
			t.Errorf("%s: complete's message %v not stored last: %+v", path, complete["message_id"], last)
		}
	}
	if got := getSession(t, in, bob, s.ID); got.Mode != "challenge" || got.MessageCount != 4 {
		t.Errorf("mode should stick and counts add up: %+v", got)
	}
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// TestStreamFailuresBeforeTheFirstEventAreJSON: nothing commits to a 200
// event stream until every check has passed.
func TestStreamFailuresBeforeTheFirstEventAreJSON(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, nil)
	s := createSession(t, in, bob, `{}`)
	closed := createSession(t, in, bob, `{}`)
	if resp, b := in.Do(t, "DELETE", "/v1/kgent/sessions/"+closed.ID, bob, ""); resp.StatusCode != 200 {
		t.Fatalf("close: %s", b)
	}
	cases := []struct {
		name, path, key, body string
		want                  int
	}{
		{"no key", "/v1/kgent/sessions/" + s.ID + "/messages", "", `{"message":"x"}`, 401},
		{"read-only key", "/v1/kgent/sessions/" + s.ID + "/messages", alice, `{"message":"x"}`, 403},
		{"unknown session", "/v1/kgent/sessions/0b6e3c1e-8f8e-4a43-9b9e-0c6a1d2f3e4a/messages", bob, `{"message":"x"}`, 404},
		{"closed session", "/v1/kgent/sessions/" + closed.ID + "/messages:stream", bob, `{"message":"x"}`, 409},
		{"budget above tier", "/v1/kgent/sessions/" + s.ID + "/messages", bob, `{"message":"x","budget":"deep"}`, 403},
		{"bad JSON", "/v1/kgent/sessions/" + s.ID + "/messages", bob, `{"message":`, 400},
		{"soul budget above tier", "/v1/soul/dialogue:stream", alice, `{"prompt":"x","budget":"dialogue"}`, 403},
		{"soul invalid mode", "/v1/soul/dialogue:stream", alice, `{"prompt":"x","mode":"shout"}`, 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, b := in.Do(t, "POST", tc.path, tc.key, tc.body)
			if resp.StatusCode != tc.want || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
				t.Fatalf("status %d (%s), want %d JSON: %s", resp.StatusCode, resp.Header.Get("Content-Type"), tc.want, b)
			}
			decodeErr(t, b)
		})
	}
}

// TestDisconnectMidStream: the turn finishes and is stored although its
// caller went away after the first chunk.
func TestDisconnectMidStream(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"SOUL_CHUNK_DELAY": "40ms"})
	s := createSession(t, in, bob, `{}`)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", in.URL+"/v1/kgent/sessions/"+s.ID+"/messages",
		strings.NewReader(`{"message":"Tell me what you think about my plan to rebuild the whole platform this quarter","mode":"explore"}`))
	req.Header.Set("X-API-Key", bob)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r := servertest.NewSSEReader(resp.Body)
	for {
		ev, err := r.Next()
		if err != nil {
			t.Fatalf("before the first chunk: %v", err)
		}
		if ev.Name == "chunk" {
			break
		}
	}
	cancel()
	_ = resp.Body.Close()
	disconnected := time.Now()

	// Meanwhile the session is busy: a second turn is refused.
	resp2, b := in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"again","stream":false}`)
	mustStatus(t, resp2, b, http.StatusConflict)
	if ra := resp2.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("a busy session's 409 has Retry-After %q, want 1", ra)
	}

	deadline := time.Now().Add(20 * time.Second)
	for {
		got := getSession(t, in, bob, s.ID)
		if got.MessageCount == 2 {
			page := listMessages(t, in, bob, s.ID)
			if page.Messages[1].Role != "assistant" || page.Messages[1].Content == "" {
				t.Fatalf("stored reply = %+v", page.Messages[1])
			}
			if time.Since(disconnected) < 100*time.Millisecond {
				t.Errorf("the reply was stored too soon to have outlived its caller")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reply never stored after the caller left: %+v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The session is free again.
	resp3, b := in.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"thanks","stream":false}`)
	mustStatus(t, resp3, b, http.StatusOK)
}

// TestSessionsSurviveRestart: the same data directory, a new process.
func TestSessionsSurviveRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := servertest.Start(t, map[string]string{"KGENTS_DATA_DIR": dir})
	s := createSession(t, first, bob, `{"title":"durable"}`)
	resp, b := first.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"remember this","stream":false}`)
	mustStatus(t, resp, b, http.StatusOK)
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	second := servertest.Start(t, map[string]string{"KGENTS_DATA_DIR": dir})
	got := getSession(t, second, bob, s.ID)
	if got.Title == nil || *got.Title != "durable" || got.MessageCount != 2 {
		t.Errorf("after restart: %+v", got)
	}
	if p := listMessages(t, second, bob, s.ID); p.Total != 2 || p.Messages[0].Content != "remember this" {
		t.Errorf("history after restart: %+v", p)
	}
}

// TestTwoProcessesShareSessions: two kgentsd on one NATS see the same sessions.
func TestTwoProcessesShareSessions(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	a := servertest.Start(t, map[string]string{"NATS_SERVERS": nats.URL(), "KGENTS_REPLICA_NAME": "a"})
	b := servertest.Start(t, map[string]string{"NATS_SERVERS": nats.URL(), "KGENTS_REPLICA_NAME": "b"})
	s := createSession(t, a, bob, `{"title":"shared"}`)
	if got := getSession(t, b, bob, s.ID); got.ID != s.ID {
		t.Fatalf("B does not see A's session: %+v", got)
	}
	resp, body := b.Do(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"from B","stream":false}`)
	mustStatus(t, resp, body, http.StatusOK)
	if p := listMessages(t, a, bob, s.ID); p.Total != 2 || p.Messages[0].Content != "from B" {
		t.Errorf("A's view of B's turn: %+v", p)
	}
	if n := countSessions(t, b, bob); n < 1 {
		t.Errorf("B lists %d sessions", n)
	}
}

// TestConcurrentDialogues runs 100 streamed turns and 100 soul dialogues at once.
func TestConcurrentDialogues(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, nil)
	const n = 100
	ids := make([]string, n)
	for i := range ids {
		ids[i] = createSession(t, in, carol, `{}`).ID
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := 0; i < n; i++ {
		wg.Add(2)
		go func(id string) {
			defer wg.Done()
			resp := in.Stream(t, "POST", "/v1/kgent/sessions/"+id+"/messages", carol, `{"message":"How do I choose between two good options?"}`)
			events := servertest.NewSSEReader(resp.Body).ReadAll(t)
			if len(events) == 0 || events[len(events)-1].Name != "complete" {
				errs <- fmt.Errorf("session %s: stream did not complete: %v", id, events)
			}
		}(ids[i])
		go func(i int) {
			defer wg.Done()
			resp, b := in.Do(t, "POST", "/v1/soul/dialogue", carol, fmt.Sprintf(`{"prompt":"question %d about priorities","mode":"advise"}`, i))
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("dialogue %d: %d %s", i, resp.StatusCode, b)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, id := range ids[:10] {
		if got := getSession(t, in, carol, id); got.MessageCount != 2 {
			t.Errorf("session %s after its turn: %+v", id, got)
		}
	}
}

func TestIdempotencyKeyREST(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, nil)
	resp, b1 := in.Do(t, "POST", "/v1/kgent/sessions", bob, `{"title":"once"}`, "Idempotency-Key", "create-1")
	mustStatus(t, resp, b1, http.StatusOK)
	resp, b2 := in.Do(t, "POST", "/v1/kgent/sessions", bob, `{"title":"once"}`, "Idempotency-Key", "create-1")
	mustStatus(t, resp, b2, http.StatusOK)
	if string(b1) != string(b2) || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replay differs or unmarked:\n%s\n%s\n%v", b1, b2, resp.Header)
	}
	resp, b := in.Do(t, "POST", "/v1/kgent/sessions", bob, `{"title":"twice"}`, "Idempotency-Key", "create-1")
	mustStatus(t, resp, b, http.StatusConflict)
	// Another tenant may use the same key.
	resp, b = in.Do(t, "POST", "/v1/kgent/sessions", carol, `{"title":"once"}`, "Idempotency-Key", "create-1")
	mustStatus(t, resp, b, http.StatusOK)

	// A streamed turn replays its events and is not run again.
	s := decode[session](t, b1)
	first := servertest.NewSSEReader(in.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"hello"}`, "Idempotency-Key", "turn-1").Body).ReadAll(t)
	again := servertest.NewSSEReader(in.Stream(t, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"hello"}`, "Idempotency-Key", "turn-1").Body).ReadAll(t)
	if len(first) == 0 || fmt.Sprint(first) != fmt.Sprint(again) {
		t.Errorf("replayed stream differs:\n%v\n%v", first, again)
	}
	if got := getSession(t, in, bob, s.ID); got.MessageCount != 2 {
		t.Errorf("replay ran the turn again: %+v", got)
	}
}

func TestSessionsGRPC(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, nil)
	client := sessionsv1.NewSessionsServiceClient(in.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bobCtx := servertest.Key(ctx, bob)

	if _, err := client.CreateSession(ctx, &sessionsv1.CreateSessionRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no key: %v", err)
	}
	if _, err := client.CreateSession(servertest.Key(ctx, alice), &sessionsv1.CreateSessionRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("read-only: %v", err)
	}
	var header metadata.MD
	created, err := client.CreateSession(bobCtx, &sessionsv1.CreateSessionRequest{Title: proto.String("grpc"), Mode: soulv1.Mode_MODE_EXPLORE})
	if err != nil || created.GetSession().GetMode() != soulv1.Mode_MODE_EXPLORE {
		t.Fatalf("create: %v %v", created, err)
	}
	id := created.GetSession().GetId()
	if _, err := client.GetSession(bobCtx, &sessionsv1.GetSessionRequest{SessionId: "nope"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad id: %v", err)
	}
	if _, err := client.GetSession(servertest.Key(ctx, carol), &sessionsv1.GetSessionRequest{SessionId: id}); status.Code(err) != codes.NotFound {
		t.Errorf("other tenant: %v", err)
	}

	stream, err := client.StreamMessage(bobCtx, &sessionsv1.StreamMessageRequest{SessionId: id, Message: "Where should this go next?"})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for {
		r, err := stream.Recv()
		if err != nil {
			break
		}
		switch r.GetEvent().GetPayload().(type) {
		case *sessionsv1.SessionEvent_Message:
			kinds = append(kinds, "message")
		case *sessionsv1.SessionEvent_Chunk:
			kinds = append(kinds, "chunk")
		case *sessionsv1.SessionEvent_Complete:
			kinds = append(kinds, "complete")
		default:
			kinds = append(kinds, "other")
		}
	}
	if len(kinds) < 3 || kinds[0] != "message" || kinds[len(kinds)-1] != "complete" {
		t.Errorf("stream events %v", kinds)
	}
	reply, err := client.SendMessage(bobCtx, &sessionsv1.SendMessageRequest{SessionId: id, Message: "thanks"})
	if err != nil || reply.GetMessage().GetRole() != sessionsv1.Role_ROLE_ASSISTANT {
		t.Fatalf("send: %v %v", reply, err)
	}
	page, err := client.ListMessages(bobCtx, &sessionsv1.ListMessagesRequest{SessionId: id, Limit: proto.Int32(3), Offset: 1})
	if err != nil || page.GetTotal() != 4 || len(page.GetMessages()) != 3 {
		t.Errorf("list messages: %v %v", page, err)
	}
	closed, err := client.CloseSession(bobCtx, &sessionsv1.CloseSessionRequest{SessionId: id}, grpc.Header(&header))
	if err != nil || closed.GetSession().GetStatus() != sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
		t.Fatalf("close: %v %v", closed, err)
	}
	if len(header.Get("x-request-id")) == 0 {
		t.Errorf("native gRPC calls get an x-request-id header: %v", header)
	}
	if _, err := client.SendMessage(bobCtx, &sessionsv1.SendMessageRequest{SessionId: id, Message: "more"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("send to closed: %v", err)
	}
}
