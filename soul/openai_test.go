package soul

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

const testAPIKey = "sk-test-SECRET-1234567890"

func newTestOpenAI(t *testing.T, f *fakeLLM, timeout time.Duration) Engine {
	t.Helper()
	e, err := NewOpenAIEngine(OpenAIConfig{BaseURL: f.baseURL(), APIKey: testAPIKey, Model: "test-model", Timeout: timeout})
	if err != nil {
		t.Fatalf("NewOpenAIEngine: %v", err)
	}
	return e
}

// collect streams req and returns the reply, the chunks and the error.
func collect(ctx context.Context, e Engine, req Request) (Reply, []Chunk, error) {
	var chunks []Chunk
	reply, err := e.Stream(ctx, req, func(c Chunk) error {
		chunks = append(chunks, c)
		return nil
	})
	return reply, chunks, err
}

func joinChunks(chunks []Chunk) string {
	var b strings.Builder
	for _, c := range chunks {
		b.WriteString(c.Text)
	}
	return b.String()
}

// assertSafe checks that an error's text leaks neither the API key nor the
// provider's body.
func assertSafe(t *testing.T, err error, forbidden ...string) {
	t.Helper()
	for _, s := range append(forbidden, testAPIKey, "SECRET") {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error %q leaks %q", err.Error(), s)
		}
	}
}

func llmKind(t *testing.T, err error) *LLMError {
	t.Helper()
	var le *LLMError
	if !errors.As(err, &le) {
		t.Fatalf("error %v (%T) is not an *LLMError", err, err)
	}
	return le
}

func TestOpenAIHappyPath(t *testing.T) {
	t.Parallel()
	deltas := []string{"Hel", "lo", ", ", "friend", "."}
	f := newFakeLLM(t, streamReply(deltas, 42, 7))
	e := newTestOpenAI(t, f, 5*time.Second)
	if e.Name() != "openai" || e.Model() != "test-model" {
		t.Fatalf("Name/Model = %q/%q", e.Name(), e.Model())
	}
	req := Request{
		Message: "I keep rewriting my framework instead of shipping",
		Mode:    soulv1.Mode_MODE_CHALLENGE,
		Budget:  soulv1.Budget_BUDGET_DEEP,
		History: []Turn{{Role: "user", Content: "earlier question"}, {Role: "assistant", Content: "earlier answer"}, {Role: "system", Content: "ignore me"}},
	}
	reply, chunks, err := collect(context.Background(), e, req)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	if len(chunks) != len(deltas) {
		t.Fatalf("got %d chunks, want %d (empty deltas must be skipped)", len(chunks), len(deltas))
	}
	for i, c := range chunks {
		if c.Index != i || c.Text != deltas[i] {
			t.Errorf("chunk %d = %+v, want {%q %d}", i, c, deltas[i], i)
		}
	}
	if reply.Text != "Hello, friend." || joinChunks(chunks) != reply.Text {
		t.Errorf("Text = %q, chunks join to %q", reply.Text, joinChunks(chunks))
	}
	if reply.TokensIn != 42 || reply.TokensOut != 7 || reply.TokensEstimated {
		t.Errorf("tokens = %d/%d estimated=%v, want 42/7 reported", reply.TokensIn, reply.TokensOut, reply.TokensEstimated)
	}
	if reply.Chunks != 5 || reply.Model != "test-model" || reply.Template || reply.Mode != req.Mode || reply.Budget != req.Budget {
		t.Errorf("reply = %+v", reply)
	}
	if len(reply.ReferencedPatterns) == 0 || reply.ReferencedPatterns[0] != "tends to over-engineer before shipping" {
		t.Errorf("ReferencedPatterns = %v", reply.ReferencedPatterns)
	}

	reqs := f.recorded()
	if len(reqs) != 1 {
		t.Fatalf("server got %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Path != "/v1/chat/completions" {
		t.Errorf("path = %q", r.Path)
	}
	if r.Authorization != "Bearer "+testAPIKey {
		t.Errorf("Authorization = %q", r.Authorization)
	}
	b := r.Body
	if b["model"] != "test-model" || b["temperature"] != 0.6 || b["max_tokens"] != 1000.0 || b["stream"] != true {
		t.Errorf("body model/temperature/max_tokens/stream = %v/%v/%v/%v", b["model"], b["temperature"], b["max_tokens"], b["stream"])
	}
	if so, _ := b["stream_options"].(map[string]any); so["include_usage"] != true {
		t.Errorf("stream_options = %v", b["stream_options"])
	}
	msgs, _ := b["messages"].([]any)
	if len(msgs) != 4 {
		t.Fatalf("messages = %v, want system, 2 history, user", msgs)
	}
	wantRoles := []string{"system", "user", "assistant", "user"}
	wantContent := []string{"", "earlier question", "earlier answer", req.Message}
	for i, m := range msgs {
		mm := m.(map[string]any)
		if mm["role"] != wantRoles[i] {
			t.Errorf("message %d role = %v, want %s", i, mm["role"], wantRoles[i])
		}
		if wantContent[i] != "" && mm["content"] != wantContent[i] {
			t.Errorf("message %d content = %v, want %q", i, mm["content"], wantContent[i])
		}
	}
	system, _ := msgs[0].(map[string]any)["content"].(string)
	for _, want := range []string{"K-gent", "categorical 0.92", "Mode: challenge", "several angles", "tends to over-engineer before shipping"} {
		if !strings.Contains(system, want) {
			t.Errorf("system prompt lacks %q:\n%s", want, system)
		}
	}
}

func TestOpenAIRequestSettingsPerModeAndBudget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode      soulv1.Mode
		budget    soulv1.Budget
		temp      float64
		maxTokens float64
		guidance  string
	}{
		{soulv1.Mode_MODE_REFLECT, soulv1.Budget_BUDGET_WHISPER, 0.4, 100, "Mode: reflect"},
		{soulv1.Mode_MODE_ADVISE, soulv1.Budget_BUDGET_DIALOGUE, 0.5, 500, "Mode: advise"},
		{soulv1.Mode_MODE_CHALLENGE, soulv1.Budget_BUDGET_DIALOGUE, 0.6, 500, "Mode: challenge"},
		{soulv1.Mode_MODE_EXPLORE, soulv1.Budget_BUDGET_DEEP, 0.8, 1000, "Mode: explore"},
	}
	for _, tt := range tests {
		t.Run(tt.mode.String()+"/"+tt.budget.String(), func(t *testing.T) {
			t.Parallel()
			f := newFakeLLM(t, streamReply([]string{"ok"}, 10, 1))
			e := newTestOpenAI(t, f, 5*time.Second)
			if _, _, err := collect(context.Background(), e, Request{Message: "a question", Mode: tt.mode, Budget: tt.budget}); err != nil {
				t.Fatalf("Stream: %v", err)
			}
			b := f.recorded()[0].Body
			if b["temperature"] != tt.temp || b["max_tokens"] != tt.maxTokens {
				t.Errorf("temperature/max_tokens = %v/%v, want %v/%v", b["temperature"], b["max_tokens"], tt.temp, tt.maxTokens)
			}
			system := b["messages"].([]any)[0].(map[string]any)["content"].(string)
			if !strings.Contains(system, tt.guidance) {
				t.Errorf("system prompt lacks %q", tt.guidance)
			}
		})
	}
}

func TestOpenAINoUsageIsEstimated(t *testing.T) {
	t.Parallel()
	f := newFakeLLM(t, streamReply([]string{"one", " two", " three four"}, -1, 0))
	e := newTestOpenAI(t, f, 5*time.Second)
	reply, _, err := collect(context.Background(), e, Request{Message: "count for me", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DIALOGUE})
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	if !reply.TokensEstimated {
		t.Error("TokensEstimated = false without a usage report")
	}
	if reply.TokensOut != estimateTokens(4) {
		t.Errorf("TokensOut = %d, want estimate %d", reply.TokensOut, estimateTokens(4))
	}
	if reply.TokensIn <= estimateTokens(3) {
		t.Errorf("TokensIn = %d: the estimate must cover the system prompt too", reply.TokensIn)
	}
}

func TestOpenAIMidStreamFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		finish func(w http.ResponseWriter)
		forbid string
		msg    string
	}{
		{"connection dropped", func(http.ResponseWriter) { panic(http.ErrAbortHandler) }, "", "connection"},
		{"malformed event", func(w http.ResponseWriter) { sse(w, `{"id": "chatcmpl-1", "choices": [ {oops`) }, "oops", "malformed"},
		{"error event", func(w http.ResponseWriter) {
			sse(w, `{"error":{"message":"upstream overloaded, key `+testAPIKey+`","type":"server_error"}}`)
		}, "overloaded", "reported an error"},
		{"ended without finish", func(http.ResponseWriter) {}, "", "ended before the reply was complete"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeLLM(t, func(w http.ResponseWriter, _ *http.Request, _ *fakeLLM) {
				startSSE(w)
				sse(w, deltaChunk("Partial", ""))
				sse(w, deltaChunk(" reply", ""))
				tt.finish(w)
			})
			e := newTestOpenAI(t, f, 5*time.Second)
			reply, chunks, err := collect(context.Background(), e, Request{Message: "go on", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DIALOGUE})
			if err == nil {
				t.Fatal("Stream succeeded, want an error")
			}
			le := llmKind(t, err)
			if le.Kind != LLMErrorProvider || le.ErrorKind() != "llm_error" {
				t.Errorf("Kind = %q, want llm_error", le.Kind)
			}
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("provider failure must not look like a context error: %v", err)
			}
			assertSafe(t, err, tt.forbid)
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("err = %q, want it to mention %q", err, tt.msg)
			}
			if reply.Text != "Partial reply" || joinChunks(chunks) != reply.Text || reply.Chunks != 2 {
				t.Errorf("partial reply = %q (%d chunks), chunks %q", reply.Text, reply.Chunks, joinChunks(chunks))
			}
			if !reply.TokensEstimated || reply.TokensOut != estimateTokens(2) || reply.TokensIn == 0 {
				t.Errorf("partial tokens = %d/%d estimated=%v", reply.TokensIn, reply.TokensOut, reply.TokensEstimated)
			}
		})
	}
}

func TestOpenAIFailureAfterFinishKeepsReply(t *testing.T) {
	t.Parallel()
	f := newFakeLLM(t, func(w http.ResponseWriter, _ *http.Request, _ *fakeLLM) {
		startSSE(w)
		sse(w, deltaChunk("Whole", ""))
		sse(w, deltaChunk(" reply.", "stop"))
		panic(http.ErrAbortHandler) // the usage chunk and [DONE] never come
	})
	e := newTestOpenAI(t, f, 5*time.Second)
	reply, chunks, err := collect(context.Background(), e, Request{Message: "go on", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DIALOGUE})
	if err != nil {
		t.Fatalf("Stream: %v; the model had finished", err)
	}
	if reply.Text != "Whole reply." || len(chunks) != 2 || !reply.TokensEstimated || reply.TokensOut != estimateTokens(2) {
		t.Errorf("reply = %+v", reply)
	}
}

func TestOpenAISlowFirstTokenTimesOut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		sendHeaders bool
	}{
		{"headers sent, no token", true},
		{"no headers", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeLLM(t, func(w http.ResponseWriter, r *http.Request, f *fakeLLM) {
				if tt.sendHeaders {
					startSSE(w)
				}
				select { // a first token that comes far too late
				case <-r.Context().Done():
				case <-f.release:
				case <-time.After(10 * time.Second):
				}
			})
			e := newTestOpenAI(t, f, 150*time.Millisecond)
			start := time.Now()
			reply, chunks, err := collect(context.Background(), e, Request{Message: "hello there, slow model", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DIALOGUE})
			if elapsed := time.Since(start); elapsed > 3*time.Second {
				t.Errorf("timeout took %v", elapsed)
			}
			le := llmKind(t, err)
			if le.Kind != LLMErrorTimeout || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v (kind %q), want timeout wrapping DeadlineExceeded", err, le.Kind)
			}
			assertSafe(t, err)
			if reply.Text != "" || len(chunks) != 0 || reply.Chunks != 0 {
				t.Errorf("reply = %+v, want empty", reply)
			}
		})
	}
}

func TestOpenAIContextCancellation(t *testing.T) {
	t.Parallel()
	f := newFakeLLM(t, func(w http.ResponseWriter, r *http.Request, f *fakeLLM) {
		startSSE(w)
		sse(w, deltaChunk("First", ""))
		select {
		case <-r.Context().Done():
		case <-f.release:
		}
	})
	e := newTestOpenAI(t, f, 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var chunks []Chunk
	reply, err := e.Stream(ctx, Request{Message: "tell me", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DIALOGUE}, func(c Chunk) error {
		chunks = append(chunks, c)
		cancel() // the caller goes away after the first chunk
		return nil
	})
	le := llmKind(t, err)
	if le.Kind != LLMErrorCanceled || !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v (kind %q), want canceled wrapping context.Canceled", err, le.Kind)
	}
	if reply.Text != "First" || reply.Chunks != 1 || len(chunks) != 1 {
		t.Errorf("partial reply = %+v", reply)
	}
}

func TestOpenAIEmitErrorStops(t *testing.T) {
	t.Parallel()
	f := newFakeLLM(t, streamReply([]string{"a", "b", "c"}, 5, 3))
	e := newTestOpenAI(t, f, 5*time.Second)
	stop := errors.New("client went away")
	n := 0
	reply, err := e.Stream(context.Background(), Request{Message: "x y", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DIALOGUE}, func(Chunk) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("err = %v, want the emit error", err)
	}
	if reply.Text != "a" || reply.Chunks != 1 {
		t.Errorf("reply = %q/%d, want the one chunk delivered", reply.Text, reply.Chunks)
	}
}

func TestOpenAIHTTPErrors(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusUnauthorized, http.StatusInternalServerError, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			f := newFakeLLM(t, func(w http.ResponseWriter, _ *http.Request, _ *fakeLLM) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = w.Write([]byte(`{"error":{"message":"Incorrect API key provided: ` + testAPIKey + `","type":"invalid_request_error","code":"invalid_api_key"}}`))
			})
			e := newTestOpenAI(t, f, 5*time.Second)
			reply, chunks, err := collect(context.Background(), e, Request{Message: "hi there friend, how are you", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DIALOGUE})
			le := llmKind(t, err)
			if le.Kind != LLMErrorProvider || le.Status != status {
				t.Errorf("kind/status = %q/%d, want llm_error/%d", le.Kind, le.Status, status)
			}
			assertSafe(t, err, "Incorrect", "invalid_api_key")
			if len(chunks) != 0 || reply.Text != "" {
				t.Errorf("reply = %+v", reply)
			}
			if n := len(f.recorded()); n != 1 {
				t.Errorf("server got %d requests, want 1 (no retries)", n)
			}
		})
	}
}

func TestOpenAIUnreachable(t *testing.T) {
	t.Parallel()
	f := newFakeLLM(t, streamReply(nil, 0, 0))
	url := f.baseURL()
	f.Close() // nothing listens there any more
	e, err := NewOpenAIEngine(OpenAIConfig{BaseURL: url, APIKey: testAPIKey, Model: "m", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = collect(context.Background(), e, Request{Message: "anyone?", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DIALOGUE})
	le := llmKind(t, err)
	if le.Kind != LLMErrorProvider {
		t.Errorf("Kind = %q", le.Kind)
	}
	assertSafe(t, err, "127.0.0.1", "connection refused")
}

func TestOpenAIFallbackWithoutCallingServer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"dormant budget", Request{Message: "I keep rewriting everything", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DORMANT}, ""},
		{"empty message", Request{Message: "  ", Mode: soulv1.Mode_MODE_REFLECT, Budget: soulv1.Budget_BUDGET_DEEP}, "What's on your mind?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeLLM(t, streamReply([]string{"model text"}, 1, 1))
			e := newTestOpenAI(t, f, 5*time.Second)
			reply, chunks, err := collect(context.Background(), e, tt.req)
			if err != nil {
				t.Fatalf("Stream: %v", err)
			}
			if n := len(f.recorded()); n != 0 {
				t.Errorf("server got %d requests, want none", n)
			}
			if reply.Model != TemplateModel || !reply.Template || reply.TokensUsed() != 0 {
				t.Errorf("reply = %+v, want a zero-token template reply", reply)
			}
			if tt.want != "" && reply.Text != tt.want {
				t.Errorf("Text = %q, want %q", reply.Text, tt.want)
			}
			if joinChunks(chunks) != reply.Text {
				t.Errorf("chunks %q != text %q", joinChunks(chunks), reply.Text)
			}
		})
	}
}

func TestOpenAICustomFallback(t *testing.T) {
	t.Parallel()
	f := newFakeLLM(t, streamReply(nil, 0, 0))
	fallback := &TemplateEngine{}
	e, err := NewOpenAIEngine(OpenAIConfig{BaseURL: f.baseURL(), Model: "m", Fallback: fallback})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.(*openAIEngine).fallback; got != fallback {
		t.Errorf("fallback = %v, want the configured engine", got)
	}
	if got := e.(*openAIEngine).timeout; got != DefaultLLMTimeout {
		t.Errorf("default timeout = %v", got)
	}
}

func TestNewOpenAIEngineValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  OpenAIConfig
	}{
		{"no base URL", OpenAIConfig{Model: "m"}},
		{"relative URL", OpenAIConfig{BaseURL: "/v1", Model: "m"}},
		{"bad scheme", OpenAIConfig{BaseURL: "ftp://user:hunter2@example.com/v1", Model: "m"}},
		{"no model", OpenAIConfig{BaseURL: "http://localhost/v1"}},
		{"negative timeout", OpenAIConfig{BaseURL: "http://localhost/v1", Model: "m", Timeout: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := NewOpenAIEngine(tt.cfg)
			if err == nil || e != nil {
				t.Fatalf("NewOpenAIEngine = %v, %v; want an error", e, err)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks the URL's password: %v", err)
			}
		})
	}
}
