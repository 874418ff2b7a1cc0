package server_test

import (
	"context"
	"encoding/hex"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/tenancy"
)

type invokeResult struct {
	Path       string         `json:"path"`
	Result     map[string]any `json:"result"`
	TokensUsed int            `json:"tokens_used"`
	Cached     bool           `json:"cached"`
}

// keyFileWith writes a key file with dev-like tenants plus a write-only key.
func keyFileWith(t *testing.T) string {
	t.Helper()
	h := tenancy.HashKey("kg_write_only")
	body := `{"tenants":[{"id":"6a0c5e58-3c1e-4f0e-9e7e-2b2a3f1d8c11","tier":"pro"}],
	  "keys":[{"sha256":"` + hex.EncodeToString(h[:]) + `","tenant_id":"6a0c5e58-3c1e-4f0e-9e7e-2b2a3f1d8c11","user_id":"w","scopes":["write"]}]}`
	p := filepath.Join(t.TempDir(), "keys.json")
	if err := writeTestFile(p, body); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAgenteseREST ports the Python test_agentese behaviours (status codes per SPEC).
func TestAgenteseREST(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false", "KGENTS_API_KEYS_FILE": keyFileWith(t)})
	invoke := func(key, body string) (*http.Response, []byte) {
		return in.Do(t, "POST", "/v1/agentese/invoke", key, body)
	}

	t.Run("auth", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			key  string
			want int
		}{{"", 401}, {"kg_invalid_key", 401}, {"kg_write_only", 403}} {
			resp, b := invoke(tc.key, `{"path":"self.soul.manifest"}`)
			mustStatus(t, resp, b, tc.want)
			if tc.want == 403 && !strings.Contains(decodeErr(t, b).Detail, "scope") {
				t.Errorf("403 detail should mention the scope: %s", b)
			}
		}
		for _, path := range []string{"/v1/agentese/resolve?path=self.soul", "/v1/agentese/affordances?path=world.house"} {
			resp, b := in.Do(t, "GET", path, "", "")
			mustStatus(t, resp, b, 401)
		}
	})
	t.Run("valid invocations", func(t *testing.T) {
		t.Parallel()
		resp, b := invoke(bob, `{"path":"self.soul.manifest"}`)
		mustStatus(t, resp, b, 200)
		if r := decode[invokeResult](t, b); r.Path != "self.soul.manifest" || len(r.Result) == 0 {
			t.Errorf("manifest = %s", b)
		}
		resp, b = invoke(bob, `{"path":"world.house.manifest","observer":{"archetype":"architect","name":"x","capabilities":["draw"]}}`)
		mustStatus(t, resp, b, 200)
		resp, b = invoke(bob, `{"path":"world.house.manifest"}`)
		mustStatus(t, resp, b, 200)
		if r := decode[invokeResult](t, b); r.Result["entity"] != "house" {
			t.Errorf("developer view of the house = %s", b)
		}
	})
	t.Run("self.soul.challenge answers with a challenge", func(t *testing.T) {
		t.Parallel()
		resp, b := invoke(bob, `{"path":"self.soul.challenge","kwargs":{"message":"I never finish my side projects"}}`)
		mustStatus(t, resp, b, 200)
		r := decode[invokeResult](t, b)
		if r.Result["mode"] != "challenge" || r.TokensUsed == 0 {
			t.Errorf("challenge = %s", b)
		}
		text, _ := r.Result["response"].(string)
		if text == "" {
			text, _ = r.Result["reply"].(string)
		}
		if !strings.Contains(text, "?") {
			t.Errorf("a challenge asks something: %q", text)
		}
	})
	t.Run("resolve and affordances", func(t *testing.T) {
		t.Parallel()
		resp, b := in.Do(t, "GET", "/v1/agentese/resolve?path=self.soul", bob, "")
		mustStatus(t, resp, b, 200)
		r := decode[struct {
			Path, Handle, Context string
			Affordances           []string
		}](t, b)
		if r.Path != "self.soul" || r.Context != "self" || !contains(r.Affordances, "challenge") || !contains(r.Affordances, "manifest") {
			t.Errorf("resolve = %s", b)
		}
		resp, b = in.Do(t, "GET", "/v1/agentese/affordances?path=world.house&archetype=architect", bob, "")
		mustStatus(t, resp, b, 200)
		a := decode[struct {
			Path              string   `json:"path"`
			Affordances       []string `json:"affordances"`
			ObserverArchetype string   `json:"observer_archetype"`
		}](t, b)
		for _, want := range []string{"manifest", "witness", "affordances", "renovate", "blueprint", "demolish"} {
			if !contains(a.Affordances, want) {
				t.Errorf("architect affordances %v lack %s", a.Affordances, want)
			}
		}
		if a.ObserverArchetype != "architect" || contains(a.Affordances, "build") {
			t.Errorf("architect affordances = %s", b)
		}
		resp, b = in.Do(t, "GET", "/v1/agentese/affordances?path=world.house", bob, "")
		mustStatus(t, resp, b, 200)
		if a := decode[struct {
			Affordances []string `json:"affordances"`
		}](t, b); !contains(a.Affordances, "build") || !contains(a.Affordances, "deploy") {
			t.Errorf("developer affordances = %s", b)
		}
	})
	t.Run("bad paths", func(t *testing.T) {
		t.Parallel()
		cases := []struct {
			name, method, path, body string
			want                     int
			mention                  string
		}{
			{"unknown context", "POST", "/v1/agentese/invoke", `{"path":"invalid.house.manifest"}`, 404, "world"},
			{"one segment", "POST", "/v1/agentese/invoke", `{"path":"world"}`, 400, ""},
			{"node path where an aspect is needed", "POST", "/v1/agentese/invoke", `{"path":"world.house"}`, 400, ""},
			{"empty path", "POST", "/v1/agentese/invoke", `{"path":""}`, 400, ""},
			{"resolve unknown context", "GET", "/v1/agentese/resolve?path=invalid.context", "", 404, ""},
			{"affordances of an unknown holon", "GET", "/v1/agentese/affordances?path=world.nonexistent_entity", "", 404, "house"},
			{"shell injection", "POST", "/v1/agentese/invoke", `{"path":"world.house; rm -rf /"}`, 400, ""},
			{"traversal", "POST", "/v1/agentese/invoke", `{"path":"world.house.../../etc/passwd"}`, 400, ""},
			{"look-alike letters", "POST", "/v1/agentese/invoke", `{"path":"world.hоuse.manifest"}`, 400, ""},
			{"too long", "POST", "/v1/agentese/invoke", `{"path":"world.` + strings.Repeat("a", 300) + `.manifest"}`, 400, "256"},
			{"10,000 segments", "POST", "/v1/agentese/invoke", `{"path":"world` + strings.Repeat(".a", 10000) + `"}`, 400, ""},
			{"typo gets a suggestion", "POST", "/v1/agentese/invoke", `{"path":"world.hose.manifest"}`, 404, "world.house"},
			{"unknown kwarg", "POST", "/v1/agentese/invoke", `{"path":"self.soul.challenge","kwargs":{"message":"x","colour":"red"}}`, 400, "message"},
			{"kwargs too deep", "POST", "/v1/agentese/invoke", `{"path":"self.soul.challenge","kwargs":{"message":"x","extra":` + strings.Repeat(`{"a":`, 20) + `1` + strings.Repeat(`}`, 20) + `}}`, 400, ""},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				resp, b := in.Do(t, tc.method, tc.path, bob, tc.body)
				if resp.StatusCode != tc.want {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, b)
				}
				if tc.mention != "" && !strings.Contains(decodeErr(t, b).Detail, tc.mention) {
					t.Errorf("detail does not mention %q: %s", tc.mention, b)
				}
			})
		}
	})
	t.Run("scopes and archetypes are the key's", func(t *testing.T) {
		t.Parallel()
		// alice is read-only: a mutating aspect needs write.
		resp, b := invoke(alice, `{"path":"world.house.build"}`)
		mustStatus(t, resp, b, 403)
		if !strings.Contains(decodeErr(t, b).Detail, "write") {
			t.Errorf("%s", b)
		}
		resp, b = invoke(bob, `{"path":"world.house.build"}`)
		mustStatus(t, resp, b, 200)
		// alice was given only the developer archetype.
		resp, b = invoke(alice, `{"path":"world.house.manifest","observer":{"archetype":"architect"}}`)
		mustStatus(t, resp, b, 403)
		// An aspect not afforded to the archetype lists what is.
		resp, b = invoke(bob, `{"path":"world.house.renovate"}`)
		mustStatus(t, resp, b, 403)
		if !strings.Contains(decodeErr(t, b).Detail, "build") {
			t.Errorf("403 should list the developer's affordances: %s", b)
		}
		// The tier's budget policy applies to self.soul too.
		resp, b = invoke(bob, `{"path":"self.soul.dialogue","kwargs":{"message":"x","budget":"deep"}}`)
		mustStatus(t, resp, b, 403)
	})
	t.Run("streamed invocation", func(t *testing.T) {
		t.Parallel()
		resp := in.Stream(t, "POST", "/v1/agentese/invoke:stream", bob, `{"path":"self.soul.dialogue","kwargs":{"message":"What would make this week good?"}}`)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		evs := servertest.NewSSEReader(resp.Body).ReadAll(t)
		if len(evs) < 2 || evs[0].Name != "chunk" || evs[len(evs)-1].Name != "complete" {
			t.Fatalf("events %v", names(evs))
		}
		if d := evs[len(evs)-1].JSON(t); d["path"] != "self.soul.dialogue" || d["tokens_used"].(float64) <= 0 {
			t.Errorf("complete = %v", d)
		}
		// A non-streaming aspect streams one complete event.
		resp = in.Stream(t, "POST", "/v1/agentese/invoke:stream", bob, `{"path":"void.entropy.manifest"}`)
		if evs := servertest.NewSSEReader(resp.Body).ReadAll(t); len(evs) != 1 || evs[0].Name != "complete" {
			t.Errorf("events %v", names(evs))
		}
		// Refusals before the stream opens are JSON.
		r2, b := in.Do(t, "POST", "/v1/agentese/invoke:stream", bob, `{"path":"self.soul.dialogue","kwargs":{"message":"x","budget":"deep"}}`)
		mustStatus(t, r2, b, 403)
	})
}

func TestAgenteseGRPC(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	client := agentesev1.NewAgenteseServiceClient(in.Conn)
	ctx := servertest.Key(context.Background(), bob)
	kw, _ := structpb.NewStruct(map[string]any{"message": "I keep avoiding the hard conversation"})
	r, err := client.Invoke(ctx, &agentesev1.InvokeRequest{Path: "self.soul.challenge", Kwargs: kw})
	if err != nil || r.GetResult().GetStructValue().GetFields()["mode"].GetStringValue() != "challenge" || r.GetTokensUsed() == 0 {
		t.Fatalf("challenge over gRPC: %v %v", r, err)
	}
	if _, err := client.Invoke(ctx, &agentesev1.InvokeRequest{Path: "nowhere.thing.manifest"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown context: %v", err)
	}
	if _, err := client.Invoke(servertest.Key(context.Background(), alice), &agentesev1.InvokeRequest{Path: "world.house.build"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("mutating aspect with read scope: %v", err)
	}
	stream, err := client.InvokeStream(ctx, &agentesev1.InvokeStreamRequest{Path: "self.soul.dialogue", Kwargs: kw})
	if err != nil {
		t.Fatal(err)
	}
	var last *agentesev1.InvokeStreamResponse
	n := 0
	for {
		m, err := stream.Recv()
		if err != nil {
			break
		}
		last, n = m, n+1
	}
	if last.GetComplete() == nil || n < 2 {
		t.Errorf("stream ended with %v after %d events", last, n)
	}
	aff, err := client.Affordances(ctx, &agentesev1.AffordancesRequest{Path: "world.house", Archetype: "architect"})
	if err != nil || !contains(aff.GetAffordances(), "blueprint") {
		t.Errorf("affordances: %v %v", aff, err)
	}
	_ = url.QueryEscape
}
