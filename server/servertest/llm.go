package servertest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// FakeLLM is a real HTTP server speaking the OpenAI chat-completions
// streaming wire format, standing in for an LLM gateway.
type FakeLLM struct {
	URL string // base URL including /v1
	// Reply is streamed word by word; Delay is waited before each word.
	Reply string
	Delay time.Duration

	mu       sync.Mutex
	requests []map[string]any
}

// StartFakeLLM starts the server; it stops when the test ends.
func StartFakeLLM(t testing.TB, reply string, delay time.Duration) *FakeLLM {
	f := &FakeLLM{Reply: reply, Delay: delay}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	f.URL = srv.URL + "/v1"
	return f
}

// Requests returns the decoded request bodies received so far.
func (f *FakeLLM) Requests() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any(nil), f.requests...)
}

func (f *FakeLLM) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/chat/completions" || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.requests = append(f.requests, req)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/event-stream")
	flusher, _ := w.(http.Flusher)
	words := strings.Fields(f.Reply)
	for i, word := range words {
		if f.Delay > 0 {
			select {
			case <-time.After(f.Delay):
			case <-r.Context().Done():
				return
			}
		}
		if i > 0 {
			word = " " + word
		}
		chunk, _ := json.Marshal(map[string]any{
			"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": req["model"],
			"choices": []map[string]any{{"index": 0, "delta": map[string]any{"content": word}, "finish_reason": nil}},
		})
		_, _ = fmt.Fprintf(w, "data: %s\n\n", chunk)
		if flusher != nil {
			flusher.Flush()
		}
	}
	done, _ := json.Marshal(map[string]any{
		"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": req["model"],
		"choices": []map[string]any{{"index": 0, "delta": map[string]any{}, "finish_reason": "stop"}},
	})
	usage, _ := json.Marshal(map[string]any{
		"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": req["model"], "choices": []any{},
		"usage": map[string]any{"prompt_tokens": 37, "completion_tokens": len(words), "total_tokens": 37 + len(words)},
	})
	_, _ = fmt.Fprintf(w, "data: %s\n\ndata: %s\n\ndata: [DONE]\n\n", done, usage)
}
