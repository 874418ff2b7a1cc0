package soul

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// fakeLLM is a real HTTP server speaking the chat-completions wire format.
// Each test gives it a handler; it records every request it receives.
type fakeLLM struct {
	*httptest.Server
	mu       sync.Mutex
	requests []recordedRequest
	// release unblocks handlers that wait (slow-token tests) when the test
	// ends, so the server can close.
	release chan struct{}
}

type recordedRequest struct {
	Path          string
	Authorization string
	Body          map[string]any
}

// newFakeLLM starts a server whose handler is h. The base URL for the
// engine is srv.URL + "/v1".
func newFakeLLM(t *testing.T, h func(w http.ResponseWriter, r *http.Request, f *fakeLLM)) *fakeLLM {
	t.Helper()
	f := &fakeLLM{release: make(chan struct{})}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var body map[string]any
		_ = json.Unmarshal(raw, &body)
		f.mu.Lock()
		f.requests = append(f.requests, recordedRequest{Path: r.URL.Path, Authorization: r.Header.Get("Authorization"), Body: body})
		f.mu.Unlock()
		h(w, r, f)
	}))
	t.Cleanup(func() {
		close(f.release)
		f.Close()
	})
	return f
}

func (f *fakeLLM) baseURL() string { return f.URL + "/v1" }

func (f *fakeLLM) recorded() []recordedRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recordedRequest(nil), f.requests...)
}

// sse writes one server-sent event and flushes it.
func sse(w http.ResponseWriter, data string) {
	_, _ = fmt.Fprintf(w, "data: %s\n\n", data)
	w.(http.Flusher).Flush()
}

func startSSE(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
}

// deltaChunk is a chat.completion.chunk carrying content (and, if finish is
// not empty, a finish_reason).
func deltaChunk(content, finish string) string {
	choice := map[string]any{"index": 0, "delta": map[string]any{"content": content}, "finish_reason": nil}
	if finish != "" {
		choice["finish_reason"] = finish
	}
	b, _ := json.Marshal(map[string]any{
		"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "test-model",
		"choices": []any{choice},
	})
	return string(b)
}

// roleChunk is the usual first chunk: the role, no content.
func roleChunk() string {
	return `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"test-model","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`
}

// usageChunk is the final chunk sent for stream_options.include_usage.
func usageChunk(prompt, completion int) string {
	return fmt.Sprintf(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"test-model","choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
		prompt, completion, prompt+completion)
}

// streamReply answers with the given content deltas, a stop chunk, a usage
// chunk (unless prompt < 0) and [DONE].
func streamReply(deltas []string, prompt, completion int) func(http.ResponseWriter, *http.Request, *fakeLLM) {
	return func(w http.ResponseWriter, _ *http.Request, _ *fakeLLM) {
		startSSE(w)
		sse(w, roleChunk())
		for _, d := range deltas {
			sse(w, deltaChunk(d, ""))
		}
		sse(w, deltaChunk("", "stop"))
		if prompt >= 0 {
			sse(w, usageChunk(prompt, completion))
		}
		sse(w, "[DONE]")
	}
}

// completionJSON is a non-streamed chat.completion answer.
func completionJSON(content string, prompt, completion int) string {
	b, _ := json.Marshal(map[string]any{
		"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "test-model",
		"choices": []any{map[string]any{
			"index": 0, "finish_reason": "stop",
			"message": map[string]any{"role": "assistant", "content": content},
		}},
		"usage": map[string]any{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
	})
	return string(b)
}
