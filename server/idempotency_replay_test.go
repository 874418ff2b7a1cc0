package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/server/servertest"
)

// TestIdempotentRetryAfterDisconnectReplaysTheWholeTurn: a caller leaves a
// streamed turn after its first chunk; the turn runs on and is stored. The
// retry with the same Idempotency-Key must replay the complete stream,
// ending in `complete` with the whole reply — not the part the first caller
// saw — and must not run the turn again.
func TestIdempotentRetryAfterDisconnectReplaysTheWholeTurn(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"SOUL_CHUNK_DELAY": "30ms"})
	s := createSession(t, in, bob, `{}`)
	path := "/v1/kgent/sessions/" + s.ID + "/messages"
	body := `{"message":"Tell me what you think about my plan to rebuild the whole platform this quarter","mode":"explore"}`

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", in.URL+path, strings.NewReader(body))
	req.Header.Set("X-API-Key", bob)
	req.Header.Set("Idempotency-Key", "disconnect-1")
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

	// The retry is refused (409) while the first run goes on; then it is a
	// replay.
	var replay []servertest.Event
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp := in.Stream(t, "POST", path, bob, body, "Idempotency-Key", "disconnect-1")
		if resp.StatusCode == http.StatusConflict {
			_ = resp.Body.Close()
			if time.Now().After(deadline) {
				t.Fatal("the first run never finished")
			}
			time.Sleep(50 * time.Millisecond) // polling the server's state, not synchronising
			continue
		}
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("retry: %d %v", resp.StatusCode, resp.Header)
		}
		replay = servertest.NewSSEReader(resp.Body).ReadAll(t)
		break
	}
	if len(replay) == 0 || replay[len(replay)-1].Name != "complete" {
		names := make([]string, len(replay))
		for i, ev := range replay {
			names[i] = ev.Name
		}
		t.Fatalf("replay of %d events ends %v; want it to end in complete", len(replay), names)
	}
	page := listMessages(t, in, bob, s.ID)
	if len(page.Messages) != 2 || page.Messages[1].Role != "assistant" {
		t.Fatalf("stored messages after a replay: %+v", page.Messages)
	}
	var text strings.Builder
	chunks := 0
	for _, ev := range replay {
		if ev.Name == "chunk" {
			text.WriteString(ev.JSON(t)["text"].(string))
			chunks++
		}
	}
	complete := replay[len(replay)-1].JSON(t)
	if complete["text"] != page.Messages[1].Content || text.String() != page.Messages[1].Content {
		t.Errorf("replayed complete %q, chunks %q (%d); stored reply %q", complete["text"], text.String(), chunks, page.Messages[1].Content)
	}
	if int(complete["chunks"].(float64)) != chunks {
		t.Errorf("complete says %v chunks, replay carried %d", complete["chunks"], chunks)
	}
}

// TestIdempotentRetryAfterDeadlineReplaysTheWholeTurn: a native gRPC
// caller whose deadline expires mid-turn left as surely as one that
// cancelled: the turn runs on, so its retry must replay it, not run it a
// second time (a second reply, billed twice).
func TestIdempotentRetryAfterDeadlineReplaysTheWholeTurn(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"SOUL_CHUNK_DELAY": "30ms"})
	client := sessionsv1.NewSessionsServiceClient(in.Conn)
	s := createSession(t, in, bob, `{}`)
	req := &sessionsv1.StreamMessageRequest{SessionId: s.ID, Message: "Tell me what you think about my plan to rebuild the whole platform this quarter"}
	keyed := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(servertest.Key(ctx, bob), "idempotency-key", "deadline-1")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The caller's deadline passes mid-turn (the server sees DeadlineExceeded).
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	stream, err := client.StreamMessage(keyed(short), req)
	if err != nil {
		t.Fatal(err)
	}
	sawChunk := false
	for {
		r, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.DeadlineExceeded || !sawChunk {
				t.Fatalf("first call ended with %v (chunk seen: %t); want its deadline mid-turn", err, sawChunk)
			}
			break
		}
		if r.GetEvent().GetComplete() != nil {
			t.Fatal("the turn completed before the deadline; make it longer")
		}
		sawChunk = sawChunk || r.GetEvent().GetChunk() != nil
	}

	var events []*sessionsv1.SessionEvent
	for {
		var header metadata.MD
		stream, err := client.StreamMessage(keyed(ctx), req, grpc.Header(&header))
		if err != nil {
			t.Fatal(err)
		}
		events = events[:0]
		var recvErr error
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr = err
				break
			}
			events = append(events, r.GetEvent())
		}
		if status.Code(recvErr) == codes.Aborted { // the first still runs
			if ctx.Err() != nil {
				t.Fatal("the first run never finished")
			}
			time.Sleep(50 * time.Millisecond) // polling the server's state
			continue
		}
		if len(header.Get("idempotent-replayed")) == 0 {
			t.Fatalf("retry was not a replay (%v, %d events): the turn ran again", recvErr, len(events))
		}
		break
	}
	if len(events) == 0 || events[len(events)-1].GetComplete() == nil {
		t.Fatalf("replay of %d events does not end in complete", len(events))
	}
	if got := getSession(t, in, bob, s.ID); got.MessageCount != 2 {
		t.Errorf("message_count %d after a retry: the turn ran twice", got.MessageCount)
	}
}
