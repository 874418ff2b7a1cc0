package recovery_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors/interceptortest"
	"github.com/kgents/kgents-go/interceptors/logging"
	"github.com/kgents/kgents-go/interceptors/recovery"
	"github.com/kgents/kgents-go/telemetry"
)

// TestPanicsBecomeInternal: a handler that panics — before or after it has
// sent something, with any value — answers Internal with a neutral message;
// the panic value and stack go to the log with the request id, the panic is
// counted, and the server keeps serving.
func TestPanicsBecomeInternal(t *testing.T) {
	t.Parallel()
	type panicky struct{ secret string }
	for _, tc := range []struct {
		name      string
		value     any
		afterSend bool // the stream sends an event before panicking
		wantLog   string
	}{
		{name: "string", value: "session table corrupt at row 17", wantLog: "session table corrupt at row 17"},
		{name: "error", value: errors.New("nil map write in turn"), wantLog: "nil map write in turn"},
		{name: "struct", value: panicky{secret: "sk_live_123"}, wantLog: "sk_live_123"},
		{name: "after a send", value: "late panic", afterSend: true, wantLog: "late panic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs := &interceptortest.Log{}
			log := telemetry.NewLogger(logs, "json", "debug")
			reg := prometheus.NewRegistry()
			rec := recovery.New(log, reg)
			calls := 0
			soul := &interceptortest.Soul{
				OnDialogue: func(context.Context, *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
					calls++
					if calls == 1 {
						panic(tc.value)
					}
					return &soulv1.DialogueResponse{Response: "fine"}, nil
				},
				OnStream: func(_ *soulv1.StreamDialogueRequest, ss grpc.ServerStreamingServer[soulv1.StreamDialogueResponse]) error {
					if tc.afterSend {
						if err := ss.Send(&soulv1.StreamDialogueResponse{Id: "1"}); err != nil {
							return err
						}
					}
					panic(tc.value)
				},
			}
			var chain interceptortest.Chain
			chain.Add(logging.New(log, nil)).Add(rec)
			client := soulv1.NewSoulServiceClient(interceptortest.Serve(t, soul, chain))
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x-request-id", "req-"+strings.ReplaceAll(tc.name, " ", "-"))

			_, uerr := client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hi"})
			st, serr := client.StreamDialogue(ctx, &soulv1.StreamDialogueRequest{Prompt: "hi"})
			received := 0
			for serr == nil {
				if _, serr = st.Recv(); serr == nil {
					received++
				}
			}
			for kind, err := range map[string]error{"unary": uerr, "stream": serr} {
				if s := status.Convert(err); s.Code() != codes.Internal || s.Message() != "internal error" {
					t.Errorf("%s: %s %q, want Internal \"internal error\"", kind, s.Code(), s.Message())
				}
			}
			if tc.afterSend && received != 1 {
				t.Errorf("the event sent before the panic: received %d", received)
			}
			if got := panics(t, reg); got != 2 {
				t.Errorf("kgents_grpc_panics_total %v, want 2", got)
			}
			lines := logs.Find(t, "panic in handler")
			if len(lines) != 2 {
				t.Fatalf("%d panic log lines, want 2: %v", len(lines), logs.Lines(t))
			}
			for _, l := range lines {
				if !strings.Contains(l["panic"].(string), tc.wantLog) || !strings.Contains(l["stack"].(string), "recovery_test.go") || l["request_id"] != "req-"+strings.ReplaceAll(tc.name, " ", "-") || l["level"] != "ERROR" {
					t.Errorf("log line %v", l)
				}
			}
			// The logging interceptor outside saw an ordinary failed call.
			for _, l := range logs.Find(t, "rpc") {
				if l["code"] != "Internal" {
					t.Errorf("rpc line %v", l)
				}
			}
			// And the server still serves.
			if resp, err := client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "again"}); err != nil || resp.GetResponse() != "fine" {
				t.Errorf("after the panic: %v %v", resp, err)
			}
		})
	}
}

// TestNoPanicPassesThrough: results and errors of handlers that do not
// panic are untouched and count nothing.
func TestNoPanicPassesThrough(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	rec := recovery.New(telemetry.NewLogger(io.Discard, "json", "info"), reg)
	soul := &interceptortest.Soul{
		OnDialogue: func(context.Context, *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
			return nil, status.Error(codes.NotFound, "no such thing")
		},
	}
	var chain interceptortest.Chain
	chain.Add(rec)
	client := soulv1.NewSoulServiceClient(interceptortest.Serve(t, soul, chain))
	if _, err := client.Dialogue(context.Background(), &soulv1.DialogueRequest{}); status.Code(err) != codes.NotFound || status.Convert(err).Message() != "no such thing" {
		t.Errorf("error %v", err)
	}
	st, err := client.StreamDialogue(context.Background(), &soulv1.StreamDialogueRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := st.Recv(); err != nil || ev.GetChunk().GetText() != "ok" {
		t.Errorf("stream: %v %v", ev, err)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("stream end: %v", err)
	}
	if got := panics(t, reg); got != 0 {
		t.Errorf("panics counted: %v", got)
	}
}

// panics reads kgents_grpc_panics_total from reg.
func panics(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kgents_grpc_panics_total" && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("kgents_grpc_panics_total is not registered")
	return 0
}
