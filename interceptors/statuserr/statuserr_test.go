package statuserr_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors/interceptortest"
	"github.com/kgents/kgents-go/interceptors/logging"
	"github.com/kgents/kgents-go/interceptors/statuserr"
	"github.com/kgents/kgents-go/telemetry"
)

const secret = "dial tcp 10.0.0.7:5432: password authentication failed for user kgents"

// TestErrorsReachTheCallerAsSafeStatuses: whatever a handler returns, the
// caller gets a status; Internal, Unknown and DataLoss text is replaced by
// a neutral message naming the request id, and logged in full with it.
func TestErrorsReachTheCallerAsSafeStatuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		err      error
		wantCode codes.Code
		wantMsg  string // exact; "" with masked
		masked   bool   // internal text replaced and logged
	}{
		{name: "plain error", err: errors.New(secret), wantCode: codes.Internal, masked: true},
		{name: "wrapped plain error", err: fmt.Errorf("load session: %w", errors.New(secret)), wantCode: codes.Internal, masked: true},
		{name: "internal status", err: status.Error(codes.Internal, secret), wantCode: codes.Internal, masked: true},
		{name: "unknown status", err: status.Error(codes.Unknown, secret), wantCode: codes.Internal, masked: true},
		{name: "data loss", err: status.Error(codes.DataLoss, secret), wantCode: codes.Internal, masked: true},
		{name: "caller's error kept", err: status.Error(codes.NotFound, "session s1 not found"), wantCode: codes.NotFound, wantMsg: "session s1 not found"},
		{name: "unavailable kept", err: status.Error(codes.Unavailable, "NATS is unreachable; retry"), wantCode: codes.Unavailable, wantMsg: "NATS is unreachable; retry"},
		{name: "canceled", err: fmt.Errorf("turn: %w", context.Canceled), wantCode: codes.Canceled, wantMsg: "the call was canceled"},
		{name: "deadline", err: fmt.Errorf("model: %w", context.DeadlineExceeded), wantCode: codes.DeadlineExceeded, wantMsg: "the call took too long"},
		{name: "success", err: nil, wantCode: codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs := &interceptortest.Log{}
			log := telemetry.NewLogger(logs, "json", "debug") // kgentsd's: it adds the request id

			soul := &interceptortest.Soul{
				OnDialogue: func(context.Context, *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
					if tc.err != nil {
						return nil, tc.err
					}
					return &soulv1.DialogueResponse{}, nil
				},
				OnStream: func(_ *soulv1.StreamDialogueRequest, ss grpc.ServerStreamingServer[soulv1.StreamDialogueResponse]) error {
					if err := ss.Send(&soulv1.StreamDialogueResponse{Id: "1"}); err != nil {
						return err
					}
					return tc.err
				},
			}
			// The logging interceptor in front gives the call its request id.
			var chain interceptortest.Chain
			chain.Add(logging.New(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)).Add(statuserr.New(log))
			client := soulv1.NewSoulServiceClient(interceptortest.Serve(t, soul, chain))

			for _, kind := range []string{"unary", "stream"} {
				reqID := "req-" + strings.ReplaceAll(tc.name, " ", "-") + "-" + kind
				ctx := metadata.AppendToOutgoingContext(context.Background(), "x-request-id", reqID)
				var err error
				if kind == "unary" {
					_, err = client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hi"})
				} else {
					var st grpc.ServerStreamingClient[soulv1.StreamDialogueResponse]
					if st, err = client.StreamDialogue(ctx, &soulv1.StreamDialogueRequest{Prompt: "hi"}); err == nil {
						for err == nil {
							_, err = st.Recv()
						}
						if errors.Is(err, io.EOF) {
							err = nil
						}
					}
				}
				got := status.Convert(err)
				if got.Code() != tc.wantCode {
					t.Fatalf("%s: code %s (%q), want %s", kind, got.Code(), got.Message(), tc.wantCode)
				}
				if strings.Contains(got.Message(), "10.0.0.7") || strings.Contains(got.Message(), "password") {
					t.Errorf("%s: internal text reached the caller: %q", kind, got.Message())
				}
				lines := logs.Find(t, "internal error")
				var logged map[string]any
				for _, l := range lines {
					if l["request_id"] == reqID {
						logged = l
					}
				}
				if !tc.masked {
					if got.Message() != tc.wantMsg {
						t.Errorf("%s: message %q, want %q", kind, got.Message(), tc.wantMsg)
					}
					if logged != nil {
						t.Errorf("%s: logged as internal: %v", kind, logged)
					}
					continue
				}
				if want := "internal error (request " + reqID + ")"; got.Message() != want {
					t.Errorf("%s: message %q, want %q", kind, got.Message(), want)
				}
				if logged == nil {
					t.Fatalf("%s: no internal error logged with request id %s: %v", kind, reqID, logs.Lines(t))
				}
				if !strings.Contains(logged["error"].(string), "password authentication failed") || logged["level"] != "ERROR" {
					t.Errorf("%s: log line %v", kind, logged)
				}
				wantMethod := interceptortest.Dialogue
				if kind == "stream" {
					wantMethod = interceptortest.StreamDialogue
				}
				if logged["method"] != wantMethod {
					t.Errorf("%s: logged method %v, want %s", kind, logged["method"], wantMethod)
				}
			}
		})
	}
}

// TestNormalizeWithoutRequestID: outside a call with an id, the neutral
// message has no reference.
func TestNormalizeWithoutRequestID(t *testing.T) {
	t.Parallel()
	n := statuserr.New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	err := n.Normalize(context.Background(), "/x/Y", errors.New(secret))
	if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Errorf("got %s %q", st.Code(), st.Message())
	}
}

func TestWithRetry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code  codes.Code
		after time.Duration
	}{{codes.Aborted, time.Second}, {codes.Unavailable, 5 * time.Second}, {codes.ResourceExhausted, 1500 * time.Millisecond}} {
		st := status.Convert(statuserr.WithRetry(tc.code, "try later", tc.after))
		if st.Code() != tc.code || st.Message() != "try later" {
			t.Errorf("%v: got %v %q", tc.code, st.Code(), st.Message())
		}
		var got time.Duration
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				got = ri.GetRetryDelay().AsDuration()
			}
		}
		if got != tc.after {
			t.Errorf("%v: retry delay %v, want %v", tc.code, got, tc.after)
		}
	}
}
