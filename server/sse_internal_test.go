package server

import (
	"net/http"
	"net/http/httptest"
	"testing"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

func TestAppendSSEFrame(t *testing.T) {
	t.Parallel()
	ev := &sessionsv1.StreamMessageResponse{Event: &sessionsv1.SessionEvent{
		Id: "12", SessionId: "s",
		Payload: &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: " keep", Index: 1}},
	}}
	if got := string(appendSSEFrame(nil, ev)); got != "id: 12\nevent: chunk\ndata: {\"text\":\" keep\",\"index\":1}\n\n" {
		t.Errorf("frame = %q", got)
	}
	soul := &soulv1.StreamDialogueResponse{Id: "3", Event: &soulv1.StreamDialogueResponse_Error{Error: &soulv1.DialogueError{Error: "model\nfailed", Type: "llm_error"}}}
	if got := string(appendSSEFrame(nil, soul)); got != "id: 3\nevent: error\ndata: {\"error\":\"model\\nfailed\",\"type\":\"llm_error\"}\n\n" {
		t.Errorf("frame = %q (data must stay on one line)", got)
	}
}

// BenchmarkSSEWrite is the SSE write path: render one chunk event and write
// and flush it to a response.
func BenchmarkSSEWrite(b *testing.B) {
	ev := &sessionsv1.StreamMessageResponse{Event: &sessionsv1.SessionEvent{
		Id: "1234", SessionId: "0b6e3c1e-8f8e-4a43-9b9e-0c6a1d2f3e4a",
		Payload: &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: " polishing", Index: 3}},
	}}
	rec := httptest.NewRecorder()
	w := &sseWriter{w: discardFlusher{rec}, rc: http.NewResponseController(discardFlusher{rec})}
	b.ReportAllocs()
	for b.Loop() {
		if err := w.frame(ev); err != nil {
			b.Fatal(err)
		}
		rec.Body.Reset()
	}
}

type discardFlusher struct{ *httptest.ResponseRecorder }

func (d discardFlusher) Flush() {}
