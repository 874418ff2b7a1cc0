package server_test

// Regression tests for how the REST gateway and the gRPC server treat input
// they cannot use: client-sent gRPC control headers, URLs that are not
// UTF-8, malformed protobuf, bodies that do not decode, and required fields
// left out.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/server/servertest"
)

// TestGrpcTimeoutHeaderIsIgnored: a client's Grpc-Timeout header is not a
// deadline for the call behind the REST request (it is not on the SPEC §4.1
// allow-list), however short or malformed it is.
func TestGrpcTimeoutHeaderIsIgnored(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	s := createSession(t, in, bob, `{}`)
	cases := []struct {
		name, method, path, body, timeout string
		sse                               bool
	}{
		{"unary, 1ns", "POST", "/v1/soul/dialogue", `{"prompt":"hello"}`, "1n", false},
		{"unary, 1us", "POST", "/v1/kgent/sessions", `{"title":"t"}`, "1u", false},
		{"unary GET, 1ns", "GET", "/v1/kgent/sessions/" + s.ID, "", "1n", false},
		{"unary, malformed", "POST", "/v1/soul/dialogue", `{"prompt":"hello"}`, "soon", false},
		{"SSE, 1ns", "POST", "/v1/soul/dialogue:stream", `{"prompt":"hello"}`, "1n", true},
		{"SSE turn, 1ns", "POST", "/v1/kgent/sessions/" + s.ID + "/messages:stream", `{"message":"hello"}`, "1n", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.sse {
				t.Parallel() // the SSE turns share one session: one at a time
			}
			if tc.sse {
				resp := in.Stream(t, tc.method, tc.path, bob, tc.body, "Grpc-Timeout", tc.timeout)
				defer func() { _ = resp.Body.Close() }()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d, want 200", resp.StatusCode)
				}
				evs := servertest.NewSSEReader(resp.Body).ReadAll(t)
				if len(evs) == 0 || evs[len(evs)-1].Name != "complete" {
					t.Fatalf("stream did not complete: %s", eventString(evs))
				}
				return
			}
			resp, b := in.Do(t, tc.method, tc.path, bob, tc.body, "Grpc-Timeout", tc.timeout)
			mustStatus(t, resp, b, http.StatusOK)
		})
	}
}

// TestInvalidUTF8InURLIs400: a path segment or query parameter that is not
// UTF-8 is the caller's error, named as such, after authentication.
func TestInvalidUTF8InURLIs400(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "LOG_LEVEL": "info"})
	cases := []struct {
		name, method, path, body string
		field                    string
	}{
		{"get session", "GET", "/v1/kgent/sessions/%FF%FE", "", "session_id"},
		{"close session", "DELETE", "/v1/kgent/sessions/%FF%FE", "", "session_id"},
		{"list messages", "GET", "/v1/kgent/sessions/%FF%FE/messages", "", "session_id"},
		{"send message", "POST", "/v1/kgent/sessions/%FF%FE/messages", `{"message":"hi","stream":false}`, "session_id"},
		{"stream message (SSE)", "POST", "/v1/kgent/sessions/%FF%FE/messages", `{"message":"hi"}`, "session_id"},
		{"watch (SSE)", "GET", "/v1/kgent/sessions/%FF%FE/events", "", "session_id"},
		{"query parameter", "GET", "/v1/agentese/resolve?path=world.%FF", "", "path"},
		{"second query parameter", "GET", "/v1/agentese/affordances?path=world.house&archetype=%C0%AF", "", "archetype"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, b := in.Do(t, tc.method, tc.path, carol, tc.body)
			mustStatus(t, resp, b, http.StatusBadRequest)
			if e := decodeErr(t, b); e.Code != "invalid_argument" || !strings.Contains(e.Detail, "UTF-8") || !strings.Contains(e.Detail, tc.field) {
				t.Errorf("body %+v, want invalid_argument naming %s and UTF-8", e, tc.field)
			}
			resp, b = in.Do(t, tc.method, tc.path, "", tc.body)
			mustStatus(t, resp, b, http.StatusUnauthorized)
		})
	}
}

// TestEvery5xxIsLogged: a 5xx answered outside any gRPC handler (here the
// readiness probe while draining) still gets a log line with its request
// id, at the production log level.
func TestEvery5xxIsLogged(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "LOG_LEVEL": "info", "SHUTDOWN_DRAIN": "1.5s"})
	waitNotServing(t, in)
	const id = "probe-5xx-logged-0001"
	resp, b := in.Do(t, "GET", "/readyz", "", "", "X-Request-ID", id)
	mustStatus(t, resp, b, http.StatusServiceUnavailable)
	waitForLog(t, in, func(line string) bool {
		return strings.Contains(line, "request_id="+id) && strings.Contains(line, "status=503")
	})
}

// waitNotServing starts shutting in down and returns once its gRPC health
// says NOT_SERVING (it drains for SHUTDOWN_DRAIN before stopping).
func waitNotServing(t *testing.T, in *servertest.Instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	watch, err := healthpb.NewHealthClient(in.Conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", r, err)
	}
	done := in.StopAsync()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch after stop: %v %v, want NOT_SERVING", r, err)
	}
}

// waitForLog waits (bounded) for a log line matching ok: the line of a
// response is written as its handler returns, which the client may see
// first.
func waitForLog(t *testing.T, in *servertest.Instance, ok func(line string) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(in.Logs.String(), "\n") {
			if ok(line) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no such log line in:\n%s", in.Logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawCodec sends and receives bytes as they are, to put malformed protobuf
// on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

// TestMalformedProtobufIsInvalidArgument: native gRPC requests that do not
// decode are the caller's error, said clearly, after authentication.
func TestMalformedProtobufIsInvalidArgument(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	cases := []struct {
		name    string
		method  string
		stream  bool
		payload []byte
		want    string
	}{
		{"truncated", soulv1.SoulService_Dialogue_FullMethodName, false, []byte{0x0a, 0x7f, 'h', 'i'}, "not a valid"},
		{"bad wire type", soulv1.SoulService_Dialogue_FullMethodName, false, []byte{0x0f}, "not a valid"},
		{"invalid UTF-8", soulv1.SoulService_Dialogue_FullMethodName, false, []byte{0x0a, 0x02, 0xff, 0xfe}, "prompt: not valid UTF-8"},
		{"another service", sessionsv1.SessionsService_CreateSession_FullMethodName, false,
			[]byte{0x0a, 0x01, 0xc0}, "title: not valid UTF-8"},
		{"nested invalid UTF-8", soulv1.SoulService_Governance_FullMethodName, false,
			[]byte{0x0a, 0x01, 'x', 0x12, 0x03, 0x0a, 0x01, 0xff}, "context.reason: not valid UTF-8"},
		{"stream, truncated", soulv1.SoulService_StreamDialogue_FullMethodName, true, []byte{0x0a, 0x7f}, "not a valid"},
		{"stream, invalid UTF-8", soulv1.SoulService_StreamDialogue_FullMethodName, true, []byte{0x0a, 0x01, 0xff}, "prompt: not valid UTF-8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			call := func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if !tc.stream {
					var out []byte
					return in.Conn.Invoke(ctx, tc.method, &tc.payload, &out, grpc.ForceCodec(rawCodec{}))
				}
				cs, err := in.Conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, tc.method, grpc.ForceCodec(rawCodec{}))
				if err != nil {
					return err
				}
				if err := cs.SendMsg(&tc.payload); err != nil {
					return err
				}
				if err := cs.CloseSend(); err != nil {
					return err
				}
				var out []byte
				return cs.RecvMsg(&out)
			}
			err := call(servertest.Key(context.Background(), carol))
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Fatalf("got %v, want InvalidArgument saying %q", err, tc.want)
			}
			if msg := status.Convert(err).Message(); strings.Contains(msg, "grpc:") || strings.Contains(msg, "proto:") {
				t.Errorf("message %q carries library text", msg)
			}
			if err := call(context.Background()); status.Code(err) != codes.Unauthenticated {
				t.Errorf("without a key: %v, want Unauthenticated first", err)
			}
		})
	}
	// A well-formed request still works through the same codec, also one
	// with an unknown field numbered like the codec's own mark.
	ctx, cancel := context.WithTimeout(servertest.Key(context.Background(), carol), 10*time.Second)
	defer cancel()
	if _, err := soulv1.NewSoulServiceClient(in.Conn).Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hello"}); err != nil {
		t.Fatalf("well-formed Dialogue: %v", err)
	}
	forged := protowire.AppendString(protowire.AppendTag([]byte{0x0a, 0x02, 'h', 'i'}, protowire.MaxValidNumber, protowire.BytesType), "forged")
	var out []byte
	if err := in.Conn.Invoke(ctx, soulv1.SoulService_Dialogue_FullMethodName, &forged, &out, grpc.ForceCodec(rawCodec{})); err != nil {
		t.Fatalf("Dialogue with a forged mark: %v, want it answered", err)
	}
}

// TestGatewayRefusalsAreMeteredAndRateLimited: a REST request refused
// before its RPC could be called (a body or query that does not decode) is
// authenticated, carries the rate-limit headers, is refused when the key is
// over its per-minute limit, and is metered as an api.request with 400.
func TestGatewayRefusalsAreMeteredAndRateLimited(t *testing.T) {
	t.Parallel()
	om := startOpenMeter(t)
	in := servertest.Start(t, map[string]string{
		"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": om.url, "OPENMETER_API_KEY": "om_test_key", "OPENMETER_FLUSH_INTERVAL": "0.05",
		"KGENTS_TIERS_FILE": tiersFile(t, `{"free":{"requests_per_minute":3,"requests_per_day":0}}`),
	})
	cases := []struct {
		name, method, path, body, route string
	}{
		{"unary body", "POST", "/v1/soul/dialogue", `{"prompt":`, "/v1/soul/dialogue"},
		{"SSE body", "POST", "/v1/soul/dialogue:stream", `{"prompt":7}`, "/v1/soul/dialogue:stream"},
		{"query", "GET", "/v1/kgent/sessions?limit=abc", "", "/v1/kgent/sessions"},
	}
	for _, tc := range cases {
		resp, b := in.Do(t, tc.method, tc.path, alice, tc.body)
		mustStatus(t, resp, b, http.StatusBadRequest)
		if resp.Header.Get("X-RateLimit-Limit") != "3" {
			t.Errorf("%s: 400 without the rate-limit headers: %v", tc.name, resp.Header)
		}
		om.waitFor(t, "the "+tc.name+" 400 as an api.request", func() bool {
			for _, ev := range om.byType("api.request") {
				d := dataOf(ev)
				if d["endpoint"] == tc.route && d["method"] == tc.method && d["status_code"] == 400.0 && d["grpc_code"] == 3.0 {
					return true
				}
			}
			return false
		})
	}
	// Spend the key's per-minute bucket; a bad body is then refused like any call.
	for i := 0; i < 3; i++ {
		resp, b := in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"hi"}`)
		mustStatus(t, resp, b, http.StatusOK)
	}
	for _, tc := range cases {
		resp, b := in.Do(t, tc.method, tc.path, alice, tc.body)
		mustStatus(t, resp, b, http.StatusTooManyRequests)
		if resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s: 429 without Retry-After", tc.name)
		}
	}
}

// TestUsageAnswersOverQuota: GET /v1/usage is how a tenant sees why it is
// limited, so it answers when every other call is refused — and is metered.
func TestUsageAnswersOverQuota(t *testing.T) {
	t.Parallel()
	om := startOpenMeter(t)
	in := servertest.Start(t, map[string]string{
		"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": om.url, "OPENMETER_API_KEY": "om_test_key", "OPENMETER_FLUSH_INTERVAL": "0.05",
		"KGENTS_TIERS_FILE": tiersFile(t, `{"free":{"requests_per_minute":2,"requests_per_day":0},"pro":{"requests_per_minute":0,"requests_per_day":1}}`),
	})
	// alice: per-minute bucket spent; bob: daily requests spent.
	for _, key := range []string{alice, alice, bob} {
		resp, b := in.Do(t, "POST", "/v1/soul/dialogue", key, `{"prompt":"hi"}`)
		mustStatus(t, resp, b, http.StatusOK)
	}
	for _, key := range []string{alice, bob} {
		resp, b := in.Do(t, "POST", "/v1/soul/dialogue", key, `{"prompt":"hi"}`)
		mustStatus(t, resp, b, http.StatusTooManyRequests)
	}
	cases := []struct {
		name, key string
		requests  int
	}{
		{"over the per-minute limit", alice, 2},
		{"over the daily limit", bob, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 3; i++ {
				resp, b := in.Do(t, "GET", "/v1/usage", tc.key, "")
				mustStatus(t, resp, b, http.StatusOK)
				if resp.Header.Get("Retry-After") != "" {
					t.Errorf("a 200 with Retry-After: %v", resp.Header)
				}
				if u := decode[usage](t, b); u.RequestsToday != tc.requests {
					t.Errorf("requests_today %d, want %d (usage reads over quota are not counted)", u.RequestsToday, tc.requests)
				}
			}
			ctx, cancel := context.WithTimeout(servertest.Key(context.Background(), tc.key), 10*time.Second)
			defer cancel()
			if _, err := usagev1.NewUsageServiceClient(in.Conn).GetUsage(ctx, &usagev1.GetUsageRequest{}); err != nil {
				t.Errorf("gRPC GetUsage over quota: %v", err)
			}
		})
	}
	om.waitFor(t, "the usage reads as api.requests", func() bool {
		n := 0
		for _, ev := range om.byType("api.request") {
			if d := dataOf(ev); d["endpoint"] == "/v1/usage" && d["status_code"] == 200.0 {
				n++
			}
		}
		return n == 6
	})
}

// TestRequiredFieldsMustBePresent: a REST body leaving out a field the API
// requires is a 400 naming it; the field given empty is accepted (SPEC
// §4.5: an empty prompt gets a short invitation).
func TestRequiredFieldsMustBePresent(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	s := createSession(t, in, bob, `{}`)
	msgs := "/v1/kgent/sessions/" + s.ID + "/messages"
	missing := []struct {
		name, path, body, field string
	}{
		{"dialogue, empty object", "/v1/soul/dialogue", `{}`, "prompt"},
		{"dialogue, no body", "/v1/soul/dialogue", ``, "prompt"},
		{"dialogue, null", "/v1/soul/dialogue", `{"prompt":null,"mode":"advise"}`, "prompt"},
		{"dialogue, other fields only", "/v1/soul/dialogue", `{"mode":"advise","observer":"x"}`, "prompt"},
		{"stream dialogue", "/v1/soul/dialogue:stream", `{"mode":"advise"}`, "prompt"},
		{"governance", "/v1/soul/governance", `{"context":{"reason":"x"}}`, "action"},
		{"invoke", "/v1/agentese/invoke", `{"kwargs":{}}`, "path"},
		{"invoke stream", "/v1/agentese/invoke:stream", `{}`, "path"},
		{"send message", msgs, `{"stream":false}`, "message"},
		{"stream message", msgs, `{}`, "message"},
		{"stream message, :stream", msgs + ":stream", `{"mode":"advise"}`, "message"},
	}
	for _, tc := range missing {
		t.Run("missing: "+tc.name, func(t *testing.T) {
			t.Parallel()
			resp, b := in.Do(t, "POST", tc.path, bob, tc.body)
			mustStatus(t, resp, b, http.StatusBadRequest)
			if e := decodeErr(t, b); e.Code != "invalid_argument" || !strings.HasPrefix(e.Detail, tc.field+":") || !strings.Contains(e.Detail, "required") {
				t.Errorf("body %+v, want invalid_argument naming %s as required", e, tc.field)
			}
			resp, b = in.Do(t, "POST", tc.path, "", tc.body)
			mustStatus(t, resp, b, http.StatusUnauthorized)
		})
	}
	present := []struct {
		name, path, body string
	}{
		{"empty prompt", "/v1/soul/dialogue", `{"prompt":""}`},
		{"prompt given", "/v1/soul/dialogue", `{"prompt":"hi"}`},
		{"empty message", msgs, `{"message":"","stream":false}`},
	}
	for _, tc := range present {
		t.Run("present: "+tc.name, func(t *testing.T) {
			resp, b := in.Do(t, "POST", tc.path, bob, tc.body)
			mustStatus(t, resp, b, http.StatusOK)
		})
	}
	// Over gRPC proto3 cannot tell an absent string from an empty one: an
	// empty prompt is an empty prompt.
	ctx, cancel := context.WithTimeout(servertest.Key(context.Background(), bob), 10*time.Second)
	defer cancel()
	if _, err := soulv1.NewSoulServiceClient(in.Conn).Dialogue(ctx, &soulv1.DialogueRequest{}); err != nil {
		t.Errorf("gRPC Dialogue without prompt: %v", err)
	}
}

// TestDoublesHaveADecimalPoint: doubles in REST JSON are written as the
// Python service wrote them, 0.0 rather than 0.
func TestDoublesHaveADecimalPoint(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	resp, b := in.Do(t, "POST", "/v1/soul/governance", bob, `{"action":"rm -rf /production/database"}`)
	mustStatus(t, resp, b, http.StatusOK)
	g := decode[map[string]any](t, b)
	conf, ok := g["confidence"].(float64)
	if !ok {
		t.Fatalf("no confidence: %s", b)
	}
	if want := fmt.Sprintf(`"confidence":%s`, pyFloat(conf)); !strings.Contains(string(b), want) {
		t.Errorf("body %s, want %s", b, want)
	}
}

// pyFloat is how Python's json writes a float: repr, always with a point or
// an exponent.
func pyFloat(f float64) string {
	s := fmt.Sprint(f)
	if !strings.ContainsAny(s, ".e") {
		s += ".0"
	}
	return s
}

// TestRefusedBodyKeepsNoIdempotencyKey: a body that does not decode is a 400
// whatever its Idempotency-Key: the key is neither claimed nor compared.
func TestRefusedBodyKeepsNoIdempotencyKey(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	for _, body := range []string{`{"title":`, `{"title":"kept"}`, `{"title":7}`, `{"title":"kept"}`} {
		resp, b := in.Do(t, "POST", "/v1/kgent/sessions", bob, body, "Idempotency-Key", "refused-body-key")
		want := http.StatusOK
		if !strings.Contains(body, `"kept"`) {
			want = http.StatusBadRequest
		}
		mustStatus(t, resp, b, want)
	}
}
