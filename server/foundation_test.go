package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/server/servertest"
)

// errBody is the REST error body.
type errBody struct {
	Detail  string `json:"detail"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func decodeErr(t *testing.T, b []byte) errBody {
	t.Helper()
	var e errBody
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, b)
	}
	if e.Detail == "" || e.Code == "" || e.Message != e.Detail {
		t.Fatalf("error body lacks detail/code/message: %s", b)
	}
	return e
}

func TestMissingKeyIs401OverRESTAndGRPC(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})

	rest := []struct {
		name, method, path, key, body string
		wantDetail                    string
	}{
		{"no key", "POST", "/v1/soul/dialogue", "", `{"prompt":"hi"}`, "API key required"},
		{"no key, body does not parse", "POST", "/v1/soul/dialogue", "", `{"prompt":`, "API key required"},
		{"no key, wrong field type", "POST", "/v1/kgent/sessions", "", `{"title":7}`, "API key required"},
		{"no key, GET", "GET", "/v1/kgent/sessions", "", "", "API key required"},
		{"no key, SSE", "POST", "/v1/soul/dialogue:stream", "", `{"prompt":"hi"}`, "API key required"},
		{"no key, watch", "GET", "/v1/kgent/sessions/0b6e3c1e-8f8e-4a43-9b9e-0c6a1d2f3e4a/events", "", "", "API key required"},
		{"bad prefix", "GET", "/v1/usage", "invalid_key", "", "Keys must start with 'kg_'"},
		{"unknown key", "GET", "/v1/usage", "kg_invalid", "", "Invalid API key"},
		{"unknown key, bad body", "POST", "/v1/soul/dialogue", "kg_invalid", `nonsense`, "Invalid API key"},
	}
	for _, tc := range rest {
		t.Run("REST "+tc.name, func(t *testing.T) {
			t.Parallel()
			resp, body := in.Do(t, tc.method, tc.path, tc.key, tc.body)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401: %s", resp.StatusCode, body)
			}
			e := decodeErr(t, body)
			if e.Code != "unauthenticated" || !strings.Contains(e.Detail, tc.wantDetail) {
				t.Errorf("body %+v, want code unauthenticated and detail containing %q", e, tc.wantDetail)
			}
		})
	}

	t.Run("gRPC", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		soul := soulv1.NewSoulServiceClient(in.Conn)
		_, err := soul.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hi"})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("Dialogue without key: %v, want Unauthenticated", err)
		}
		_, err = soul.Dialogue(servertest.Key(ctx, "kg_nope"), &soulv1.DialogueRequest{Prompt: "hi"})
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "Invalid API key") {
			t.Errorf("Dialogue with unknown key: %v, want Unauthenticated", err)
		}
		stream, err := soul.StreamDialogue(ctx, &soulv1.StreamDialogueRequest{Prompt: "hi"})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("StreamDialogue without key: %v, want Unauthenticated", err)
		}
	})
}

func TestBearerAndScopes(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	// alice is read-only: creating a session needs write.
	resp, body := in.Do(t, "POST", "/v1/kgent/sessions", "kg_dev_alice", `{}`)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("alice create: %d %s, want 403", resp.StatusCode, body)
	}
	if e := decodeErr(t, body); !strings.Contains(e.Detail, "'write' scope") {
		t.Errorf("detail %q does not name the scope", e.Detail)
	}
	// Authorization: Bearer is accepted like X-API-Key.
	resp, body = in.Do(t, "POST", "/v1/kgent/sessions", "", `{}`, "Authorization", "Bearer kg_dev_alice")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("alice via bearer: %d %s, want 403 (authenticated, lacks scope)", resp.StatusCode, body)
	}
	ctx := servertest.Key(context.Background(), "kg_dev_alice")
	_, err := sessionsv1.NewSessionsServiceClient(in.Conn).CreateSession(ctx, &sessionsv1.CreateSessionRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC alice create: %v, want PermissionDenied", err)
	}
}

func TestBadInputNamesTheField(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	cases := []struct {
		name, method, path, body string
		want                     string
	}{
		{"invalid mode", "POST", "/v1/soul/dialogue", `{"prompt":"x","mode":"shout"}`, "Invalid mode 'shout'. Valid modes: reflect, advise, challenge, explore"},
		{"invalid budget", "POST", "/v1/soul/dialogue", `{"prompt":"x","budget":"lots"}`, "Invalid budget 'lots'"},
		{"malformed JSON", "POST", "/v1/soul/dialogue", `{"prompt":"x",}`, "not valid JSON"},
		{"wrong type", "POST", "/v1/kgent/sessions", `{"title":["a"]}`, "title: expected a string"},
		{"bad query integer", "GET", "/v1/kgent/sessions?limit=abc", "", "limit: expected an integer"},
		{"limit out of range", "GET", "/v1/kgent/sessions?limit=500", "", "limit"},
		{"session id not a UUID", "GET", "/v1/kgent/sessions/not-a-uuid", "", "session_id"},
		{"title too long", "POST", "/v1/kgent/sessions", `{"title":"` + strings.Repeat("t", 201) + `"}`, "title"},
		{"message too large", "POST", "/v1/kgent/sessions/0b6e3c1e-8f8e-4a43-9b9e-0c6a1d2f3e4a/messages", `{"stream":false,"message":"` + strings.Repeat("m", 32*1024+1) + `"}`, "message"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, body := in.Do(t, tc.method, tc.path, "kg_dev_carol", tc.body)
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", resp.StatusCode, body)
			}
			if e := decodeErr(t, body); e.Code != "invalid_argument" || !strings.Contains(e.Detail, tc.want) {
				t.Errorf("body %+v, want invalid_argument naming %q", e, tc.want)
			}
		})
	}
}

func TestBodyLimit(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "HTTP_MAX_BODY_BYTES": "4096"})
	big := `{"prompt":"` + strings.Repeat("x", 8192) + `"}`
	for _, path := range []string{"/v1/soul/dialogue", "/v1/soul/dialogue:stream", "/v1/kgent/sessions/0b6e3c1e-8f8e-4a43-9b9e-0c6a1d2f3e4a/messages"} {
		resp, body := in.Do(t, "POST", path, "kg_dev_carol", big)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: status %d, want 413: %s", path, resp.StatusCode, body)
			continue
		}
		if e := decodeErr(t, body); !strings.Contains(e.Detail, "4096") {
			t.Errorf("%s: detail %q does not state the limit", path, e.Detail)
		}
	}
	// Without a key, authentication still comes first.
	if resp, body := in.Do(t, "POST", "/v1/soul/dialogue", "", big); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no key, big body: %d %s, want 401", resp.StatusCode, body)
	}
}

func TestCORS(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "CORS_ORIGINS": "http://localhost:3000,https://app.example.com"})
	preflight := func(origin string) *http.Response {
		req, _ := http.NewRequest("OPTIONS", in.URL+"/v1/soul/dialogue", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "x-api-key, content-type")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp
	}
	resp := preflight("https://app.example.com")
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("allowed preflight: %d, want 204", resp.StatusCode)
	}
	for h, want := range map[string]string{
		"Access-Control-Allow-Origin":      "https://app.example.com",
		"Access-Control-Allow-Credentials": "true",
		"Access-Control-Max-Age":           "600",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	for _, want := range []string{"X-API-Key", "Idempotency-Key", "Last-Event-ID", "Authorization"} {
		if !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), want) {
			t.Errorf("Allow-Headers %q lacks %s", resp.Header.Get("Access-Control-Allow-Headers"), want)
		}
	}
	if resp := preflight("https://evil.example.com"); resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("disallowed preflight: %d ACAO=%q, want 403 without ACAO", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
	}
	// A real request from an allowed origin exposes the rate-limit headers.
	r, _ := in.Do(t, "GET", "/v1/usage", "", "", "Origin", "http://localhost:3000")
	expose := r.Header.Get("Access-Control-Expose-Headers")
	for _, want := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "X-Request-ID"} {
		if !strings.Contains(expose, want) {
			t.Errorf("Expose-Headers %q lacks %s", expose, want)
		}
	}
	if r.Header.Get("Access-Control-Allow-Origin") != "http://localhost:3000" {
		t.Errorf("ACAO = %q", r.Header.Get("Access-Control-Allow-Origin"))
	}
}

func TestRequestIDAndResponseTime(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	cases := []struct {
		name, sent string
		echoed     bool
	}{
		{"generated", "", false},
		{"echoed", "req-123.abc", true},
		{"unsafe id replaced", "bad id <script>", false},
	}
	for _, tc := range cases {
		var headers []string
		if tc.sent != "" {
			headers = []string{"X-Request-ID", tc.sent}
		}
		for _, path := range []string{"/health", "/v1/usage", "/nope"} {
			resp, _ := in.Do(t, "GET", path, "", "", headers...)
			got := resp.Header.Get("X-Request-ID")
			if tc.echoed && got != tc.sent || !tc.echoed && (got == "" || got == tc.sent) {
				t.Errorf("%s %s: X-Request-ID %q (sent %q)", tc.name, path, got, tc.sent)
			}
			if rt := resp.Header.Get("X-Response-Time"); !strings.HasSuffix(rt, "ms") {
				t.Errorf("%s %s: X-Response-Time %q", tc.name, path, rt)
			}
		}
	}
}

func TestRoutingErrorsAreJSON(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	resp, body := in.Do(t, "GET", "/v2/nothing", "kg_dev_bob", "")
	if resp.StatusCode != http.StatusNotFound || decodeErr(t, body).Detail != "Not Found" {
		t.Errorf("unknown path: %d %s", resp.StatusCode, body)
	}
	resp, body = in.Do(t, "PUT", "/v1/soul/dialogue", "kg_dev_bob", "{}")
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("wrong method: %d %s, want 405", resp.StatusCode, body)
	}
	resp, body = in.Do(t, "GET", "/v1/soul/dialogue:stream", "kg_dev_bob", "")
	if resp.StatusCode != http.StatusMethodNotAllowed || decodeErr(t, body).Detail != "Method Not Allowed" {
		t.Errorf("wrong method on SSE route: %d %s", resp.StatusCode, body)
	}
}

func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		env      map[string]string
		natsStat string
		natsMode string
	}{
		{"NATS disabled", map[string]string{"NATS_ENABLED": "false"}, "disabled", "fallback"},
		{"embedded NATS", nil, "healthy", "jetstream"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := servertest.Start(t, tc.env)
			resp, body := in.Do(t, "GET", "/health", "", "")
			var h struct {
				Status     string            `json:"status"`
				Version    string            `json:"version"`
				Engine     string            `json:"engine"`
				Components map[string]string `json:"components"`
			}
			if err := json.Unmarshal(body, &h); err != nil || resp.StatusCode != 200 {
				t.Fatalf("/health: %d %s", resp.StatusCode, body)
			}
			if h.Status != "ok" || h.Version == "" || h.Engine != "template" || h.Components["soul"] != "ok" {
				t.Errorf("/health = %s", body)
			}
			resp, body = in.Do(t, "GET", "/health/saas", "", "")
			var saas struct {
				Status string `json:"status"`
				NATS   struct {
					Status string `json:"status"`
					Mode   string `json:"mode"`
				} `json:"nats"`
				OpenMeter struct {
					Status string `json:"status"`
				} `json:"openmeter"`
			}
			if err := json.Unmarshal(body, &saas); err != nil || resp.StatusCode != 200 {
				t.Fatalf("/health/saas: %d %s", resp.StatusCode, body)
			}
			if saas.Status != "ok" || saas.NATS.Status != tc.natsStat || saas.NATS.Mode != tc.natsMode || saas.OpenMeter.Status != "disabled" {
				t.Errorf("/health/saas = %s", body)
			}
			for path, want := range map[string]int{"/livez": 200, "/readyz": 200, "/openapi.json": 200, "/": 200, "/metrics": 200} {
				if resp, body := in.Do(t, "GET", path, "", ""); resp.StatusCode != want {
					t.Errorf("%s: %d %s", path, resp.StatusCode, body)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			hc := healthpb.NewHealthClient(in.Conn)
			for _, svc := range []string{"", "kgents.sessions.v1.SessionsService", "kgents.soul.v1.SoulService", "kgents.agentese.v1.AgenteseService"} {
				r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
				if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					t.Errorf("grpc health %q: %v %v", svc, r.GetStatus(), err)
				}
			}
		})
	}
}

// TestDrainingState checks the drain window: readiness goes 503 and gRPC
// health NOT_SERVING while the process still answers, then it exits cleanly.
func TestDrainingState(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "SHUTDOWN_DRAIN": "1.5s"})
	hc := healthpb.NewHealthClient(in.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", r, err)
	}
	done := in.StopAsync()
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch after SIGTERM: %v %v, want NOT_SERVING", r, err)
	}
	cancel() // an open health watch would hold GracefulStop until SHUTDOWN_TIMEOUT
	resp, body := in.Do(t, "GET", "/readyz", "", "")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "draining") {
		t.Errorf("/readyz while draining: %d %s", resp.StatusCode, body)
	}
	if resp, _ := in.Do(t, "GET", "/livez", "", ""); resp.StatusCode != 200 {
		t.Errorf("/livez while draining: %d", resp.StatusCode)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve returned %v, want nil", err)
	}
}

func TestOpenAPIAndReflection(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	resp, body := in.Do(t, "GET", "/openapi.json", "", "")
	var doc struct {
		Paths map[string]map[string]struct {
			Tags []string `json:"tags"`
		} `json:"paths"`
		Components struct {
			Schemas map[string]struct {
				Enum []string `json:"enum"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/openapi.json: %d %v", resp.StatusCode, err)
	}
	tags := map[string]string{
		"/v1/kgent/sessions":       "kgent",
		"/v1/soul/dialogue":        "soul",
		"/v1/agentese/invoke":      "agentese",
		"/v1/soul/dialogue:stream": "soul",
	}
	for path, tag := range tags {
		ops, ok := doc.Paths[path]
		if !ok {
			t.Errorf("OpenAPI lacks %s", path)
			continue
		}
		for m, op := range ops {
			if len(op.Tags) == 0 || op.Tags[0] != tag {
				t.Errorf("%s %s tags %v, want %s", m, path, op.Tags, tag)
			}
		}
	}
	if got := strings.Join(doc.Components.Schemas["v1Mode"].Enum, ","); got != "reflect,advise,challenge,explore" {
		t.Errorf("Mode enum documented as %q", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(in.Conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"kgents.sessions.v1.SessionsService", "kgents.soul.v1.SoulService", "kgents.agentese.v1.AgenteseService", "kgents.usage.v1.UsageService", "grpc.health.v1.Health"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
}
