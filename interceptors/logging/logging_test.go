package logging_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/auth"
	"github.com/kgents/kgents-go/interceptors/interceptortest"
	"github.com/kgents/kgents-go/interceptors/logging"
	"github.com/kgents/kgents-go/telemetry"
	"github.com/kgents/kgents-go/tenancy"
)

// keys authenticates the test keys.
type keys map[string]*tenancy.Identity

func (k keys) Authenticate(raw string) (*tenancy.Identity, error) {
	if id, ok := k[raw]; ok {
		return id, nil
	}
	return nil, errors.New("invalid API key")
}

var testKeys = keys{"kg_alice": {TenantID: "t-alice", KeyID: "k-alice", Scopes: tenancy.ScopeRead}}

var rules = auth.Rules{Methods: map[string]auth.Rule{
	interceptortest.Dialogue:       {Scope: tenancy.ScopeRead},
	interceptortest.StreamDialogue: {Scope: tenancy.ScopeRead},
	interceptortest.Governance:     {Public: true},
}}

// serve starts the service behind logging (and auth after it, which fills
// in the tenant), optionally as if through the REST gateway.
func serve(t *testing.T, logs io.Writer, viaGateway bool, quiet func(string) bool) soulv1.SoulServiceClient {
	t.Helper()
	soul := &interceptortest.Soul{
		OnDialogue: func(_ context.Context, req *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
			switch req.GetPrompt() {
			case "fail":
				return nil, status.Error(codes.Internal, "internal error (request x)")
			case "busy":
				return nil, status.Error(codes.Unavailable, "NATS is unreachable")
			case "missing":
				return nil, status.Error(codes.NotFound, "no such session")
			}
			return &soulv1.DialogueResponse{Response: "ok"}, nil
		},
		OnStream: func(_ *soulv1.StreamDialogueRequest, ss grpc.ServerStreamingServer[soulv1.StreamDialogueResponse]) error {
			for range 3 {
				if err := ss.Send(&soulv1.StreamDialogueResponse{}); err != nil {
					return err
				}
			}
			return nil
		},
	}
	var chain interceptortest.Chain
	if viaGateway {
		u, s := interceptortest.ViaGateway()
		chain.Unary, chain.Stream = append(chain.Unary, u), append(chain.Stream, s)
	}
	chain.Add(logging.New(telemetry.NewLogger(logs, "json", "debug"), quiet)).Add(auth.New(testKeys, rules))
	return soulv1.NewSoulServiceClient(interceptortest.Serve(t, soul, chain))
}

// TestOneLinePerCall: every call ends in exactly one "rpc" line carrying
// its method, code, duration, how it came, the tenant when known and the
// error text; the level follows the code.
func TestOneLinePerCall(t *testing.T) {
	t.Parallel()
	type want struct {
		method, code, level, tenant, errText string
		messagesSent                         float64 // streams only
	}
	for _, tc := range []struct {
		name string
		call func(ctx context.Context, c soulv1.SoulServiceClient) error
		key  string
		want want
	}{
		{"ok", dialogue("hi"), "kg_alice", want{method: interceptortest.Dialogue, code: "OK", level: "INFO", tenant: "t-alice"}},
		{"caller's error", dialogue("missing"), "kg_alice", want{method: interceptortest.Dialogue, code: "NotFound", level: "INFO", tenant: "t-alice", errText: "no such session"}},
		{"internal", dialogue("fail"), "kg_alice", want{method: interceptortest.Dialogue, code: "Internal", level: "ERROR", tenant: "t-alice", errText: "internal error (request x)"}},
		{"unavailable", dialogue("busy"), "kg_alice", want{method: interceptortest.Dialogue, code: "Unavailable", level: "WARN", tenant: "t-alice", errText: "NATS is unreachable"}},
		{"refused by auth", dialogue("hi"), "kg_nobody", want{method: interceptortest.Dialogue, code: "Unauthenticated", level: "INFO", errText: "invalid API key"}},
		{"public", func(ctx context.Context, c soulv1.SoulServiceClient) error {
			_, err := c.Governance(ctx, &soulv1.GovernanceRequest{Action: "ls"})
			return err
		}, "", want{method: interceptortest.Governance, code: "OK", level: "INFO"}},
		{"stream", func(ctx context.Context, c soulv1.SoulServiceClient) error {
			st, err := c.StreamDialogue(ctx, &soulv1.StreamDialogueRequest{Prompt: "hi"})
			for err == nil {
				_, err = st.Recv()
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}, "kg_alice", want{method: interceptortest.StreamDialogue, code: "OK", level: "INFO", tenant: "t-alice", messagesSent: 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs := &interceptortest.Log{}
			client := serve(t, logs, false, nil)
			ctx := context.Background()
			if tc.key != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "x-api-key", tc.key)
			}
			ctx = metadata.AppendToOutgoingContext(ctx, "x-request-id", "req-1")
			if err := tc.call(ctx, client); status.Code(err).String() != tc.want.code {
				t.Fatalf("call: %v, want %s", err, tc.want.code)
			}
			lines := logs.Find(t, "rpc")
			if len(lines) != 1 {
				t.Fatalf("%d rpc lines, want 1: %v", len(lines), logs.Lines(t))
			}
			l := lines[0]
			check := func(field string, want any) {
				t.Helper()
				if got, ok := l[field]; want == nil && ok || want != nil && got != want {
					t.Errorf("%s = %v, want %v (line %v)", field, got, want, l)
				}
			}
			check("method", tc.want.method)
			check("code", tc.want.code)
			check("level", tc.want.level)
			check("via", "grpc")
			check("request_id", "req-1")
			if d, ok := l["duration_ms"].(float64); !ok || d < 0 {
				t.Errorf("duration_ms %v", l["duration_ms"])
			}
			if tc.want.tenant != "" {
				check("tenant_id", tc.want.tenant)
				check("key_id", "k-alice")
			} else {
				check("tenant_id", nil)
			}
			if tc.want.errText != "" {
				check("error", tc.want.errText)
			} else {
				check("error", nil)
			}
			if tc.want.messagesSent > 0 {
				check("messages_sent", tc.want.messagesSent)
			} else {
				check("messages_sent", nil)
			}
		})
	}
}

// TestRequestID: a well-formed x-request-id is the call's id and is
// returned to a native caller; a missing or malformed one is replaced by a
// fresh one. Through the gateway (which sent it) no header is added.
func TestRequestID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		sent       string
		viaGateway bool
		keep       bool // the sent id is the call's
	}{
		{name: "well formed", sent: "abc-123:x.y_z", keep: true},
		{name: "missing"},
		{name: "malformed", sent: "has spaces; and {braces}"},
		{name: "too long", sent: strings.Repeat("a", 129)},
		{name: "through the gateway", sent: "from-the-gateway", viaGateway: true, keep: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs := &interceptortest.Log{}
			client := serve(t, logs, tc.viaGateway, nil)
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", "kg_alice")
			if tc.sent != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "x-request-id", tc.sent)
			}
			var header metadata.MD
			if _, err := client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hi"}, grpc.Header(&header)); err != nil {
				t.Fatal(err)
			}
			lines := logs.Find(t, "rpc")
			if len(lines) != 1 {
				t.Fatalf("rpc lines %v", lines)
			}
			id, _ := lines[0]["request_id"].(string)
			switch {
			case tc.keep && id != tc.sent:
				t.Errorf("request id %q, want the caller's %q", id, tc.sent)
			case !tc.keep && (id == tc.sent || !telemetry.ValidRequestID(id) || len(id) != 32):
				t.Errorf("request id %q, want a fresh one", id)
			}
			got := header.Get("x-request-id")
			if tc.viaGateway {
				if len(got) != 0 {
					t.Errorf("x-request-id header through the gateway: %v", got)
				}
				if lines[0]["via"] != "rest" {
					t.Errorf("via %v, want rest", lines[0]["via"])
				}
				return
			}
			if len(got) != 1 || got[0] != id {
				t.Errorf("x-request-id header %v, want [%s]", got, id)
			}
		})
	}
}

// TestGatewayRoute: a call through the gateway logs the HTTP route it came
// by; the same metadata from a native caller is not believed.
func TestGatewayRoute(t *testing.T) {
	t.Parallel()
	for _, viaGateway := range []bool{true, false} {
		logs := &interceptortest.Log{}
		client := serve(t, logs, viaGateway, nil)
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", "kg_alice",
			interceptors.MDHTTPRoute, "/v1/soul/dialogue", interceptors.MDHTTPMethod, "POST")
		if _, err := client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hi"}); err != nil {
			t.Fatal(err)
		}
		l := logs.Find(t, "rpc")[0]
		if viaGateway && (l["via"] != "rest" || l["http_route"] != "/v1/soul/dialogue") {
			t.Errorf("through the gateway: %v", l)
		}
		if !viaGateway && (l["via"] != "grpc" || l["http_route"] != nil) {
			t.Errorf("native call claiming a route: %v", l)
		}
	}
}

// TestQuietServices: calls of quiet services (health checks) log at debug,
// whatever their code.
func TestQuietServices(t *testing.T) {
	t.Parallel()
	logs := &interceptortest.Log{}
	client := serve(t, logs, false, func(svc string) bool { return svc == "kgents.soul.v1.SoulService" })
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", "kg_alice")
	_, _ = client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hi"})
	_, _ = client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "fail"})
	lines := logs.Find(t, "rpc")
	if len(lines) != 2 {
		t.Fatalf("rpc lines %v", lines)
	}
	for _, l := range lines {
		if l["level"] != "DEBUG" {
			t.Errorf("quiet service logged at %v: %v", l["level"], l)
		}
	}
}

func dialogue(prompt string) func(context.Context, soulv1.SoulServiceClient) error {
	return func(ctx context.Context, c soulv1.SoulServiceClient) error {
		_, err := c.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: prompt})
		return err
	}
}
