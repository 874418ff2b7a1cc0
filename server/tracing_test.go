package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/server/servertest"
)

// TestCallsContinueTheCallersTrace: with nothing exported (no
// OTEL_EXPORTER_OTLP_ENDPOINT), a call that brings a traceparent — over
// REST or native gRPC — has its log line carry the caller's trace id, and a
// call without one gets no trace id (no span is started for it:
// telemetry.ServerStatsHandler).
func TestCallsContinueTheCallersTrace(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "LOG_LEVEL": "info"})
	const (
		trace       = "4bf92f3577b34da6a3ce929d0e0e4736"
		traceparent = "00-" + trace + "-00f067aa0ba902b7-01"
		dialogue    = `{"prompt":"hello","mode":"advise"}`
	)
	resp, b := in.Do(t, "POST", "/v1/soul/dialogue", "kg_dev_bob", dialogue, "X-Request-ID", "rest-traced-0001", "traceparent", traceparent)
	mustStatus(t, resp, b, http.StatusOK)
	resp, b = in.Do(t, "POST", "/v1/soul/dialogue", "kg_dev_bob", dialogue, "X-Request-ID", "rest-untraced-0001")
	mustStatus(t, resp, b, http.StatusOK)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", "kg_dev_bob",
		"x-request-id", "grpc-traced-0001", "traceparent", traceparent)
	if _, err := soulv1.NewSoulServiceClient(in.Conn).Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hello"}); err != nil {
		t.Fatal(err)
	}

	rpcLine := func(id string) string {
		var line string
		waitForLog(t, in, func(l string) bool {
			if strings.Contains(l, "msg=rpc") && strings.Contains(l, "request_id="+id) {
				line = l
				return true
			}
			return false
		})
		return line
	}
	for _, id := range []string{"rest-traced-0001", "grpc-traced-0001"} {
		if l := rpcLine(id); !strings.Contains(l, "trace_id="+trace) {
			t.Errorf("%s: the log line does not carry the caller's trace:\n%s", id, l)
		}
	}
	if l := rpcLine("rest-untraced-0001"); strings.Contains(l, "trace_id=") {
		t.Errorf("a call without a trace context got a trace id:\n%s", l)
	}
}
