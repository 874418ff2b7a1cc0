package idempotency_test

import (
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors/idempotency"
)

// turnHandler sends n events of size bytes each and, like the Sessions
// service, keeps sending after a send failed; it ends with endErr when a
// send failed (the caller's context error), nil otherwise.
func turnHandler(runs *atomic.Int32, n, size int, endErr error) grpc.StreamHandler {
	return func(_ any, ss grpc.ServerStream) error {
		runs.Add(1)
		req := &sessionsv1.StreamMessageRequest{}
		if err := ss.RecvMsg(req); err != nil {
			return err
		}
		var sendErr error
		for i := range n {
			ev := &sessionsv1.SessionEvent{Id: string(rune('a' + i%26)), SessionId: req.GetSessionId()}
			if i == n-1 {
				ev.Payload = &sessionsv1.SessionEvent_Complete{Complete: &soulv1.DialogueComplete{Text: strings.Repeat("x", size)}}
			} else {
				ev.Payload = &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: strings.Repeat("y", size), Index: int32(i)}}
			}
			if err := ss.SendMsg(&sessionsv1.StreamMessageResponse{Event: ev}); err != nil && sendErr == nil {
				sendErr = err
			}
		}
		if sendErr != nil {
			return endErr
		}
		return nil
	}
}

// TestStreamCallerDeadlineKeepsTheRun: a caller whose deadline expired left
// like one that cancelled; the turn ran to its end, so the retry replays it
// rather than running it a second time.
func TestStreamCallerDeadlineKeepsTheRun(t *testing.T) {
	t.Parallel()
	ic := idempotency.New(idempotency.NewMemory(time.Hour), []string{streamMethod}, time.Minute, slog.Default()).Stream()
	info := &grpc.StreamServerInfo{FullMethod: streamMethod, IsServerStream: true}
	var runs atomic.Int32
	h := turnHandler(&runs, 5, 10, status.Error(codes.DeadlineExceeded, "context deadline exceeded"))
	req := &sessionsv1.StreamMessageRequest{SessionId: "s1", Message: "hi"}
	gone := &serverStream{ctx: callCtx("t", "k"), req: req, sendErr: errors.New("transport closed")}
	if err := ic(nil, gone, info, h); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("first call: %v", err)
	}
	retry := &serverStream{ctx: callCtx("t", "k"), req: req}
	if err := ic(nil, retry, info, h); err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 1 || len(retry.sent) != 5 || retry.sent[4].(*sessionsv1.StreamMessageResponse).GetEvent().GetComplete() == nil {
		t.Fatalf("retry after a deadline: runs %d, %d events sent; want 1 run and a replay of 5 ending in complete", runs.Load(), len(retry.sent))
	}
}

// TestLongStreamIsKeptInTheJetStreamStore: a stream under the documented
// size bound must fit the KV bucket once encoded (JSON, base64), so that
// its retry is a replay and not a second run.
func TestLongStreamIsKeptInTheJetStreamStore(t *testing.T) {
	t.Parallel()
	store := stores(t)["jetstream"](t)
	ic := idempotency.New(store, []string{streamMethod}, time.Minute, slog.Default()).Stream()
	info := &grpc.StreamServerInfo{FullMethod: streamMethod, IsServerStream: true}
	var runs atomic.Int32
	// 800 events of ~1 KiB: about 800 KiB of protobuf, under the 900 KiB
	// kept per response; about 1.07 MiB once base64'd into the entry.
	h := turnHandler(&runs, 800, 1000, nil)
	req := &sessionsv1.StreamMessageRequest{SessionId: "s1", Message: "hi"}
	first := &serverStream{ctx: callCtx("t", "long"), req: req}
	if err := ic(nil, first, info, h); err != nil {
		t.Fatal(err)
	}
	retry := &serverStream{ctx: callCtx("t", "long"), req: req}
	err := ic(nil, retry, info, h)
	switch {
	case status.Code(err) == codes.FailedPrecondition:
		// Too large to keep, and said so: acceptable.
	case err != nil:
		t.Fatal(err)
	case runs.Load() != 1:
		t.Fatalf("the retry ran the turn again (%d runs): the stored stream did not fit the store", runs.Load())
	case len(retry.sent) != 800:
		t.Fatalf("replayed %d of 800 events", len(retry.sent))
	}
}
