package server_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/kgents/kgents-go/server/servertest"
)

// httpRule is one google.api.http binding of an RPC.
type httpRule struct {
	method, path string
	streaming    bool // a server-streaming RPC: answered as SSE
	rpc          string
}

// protoHTTPRules walks every kgents service of the registry (what
// grpc-gateway registers: package server links every generated package) for
// its HTTP bindings, additional ones included.
func protoHTTPRules(t *testing.T) []httpRule {
	t.Helper()
	var rules []httpRule
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if !strings.HasPrefix(string(fd.Package()), "kgents.") {
			return true
		}
		for i := range fd.Services().Len() {
			svc := fd.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				rule, _ := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
				if rule == nil {
					continue
				}
				for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
					var method, path string
					switch p := r.GetPattern().(type) {
					case *annotations.HttpRule_Get:
						method, path = "get", p.Get
					case *annotations.HttpRule_Post:
						method, path = "post", p.Post
					case *annotations.HttpRule_Put:
						method, path = "put", p.Put
					case *annotations.HttpRule_Patch:
						method, path = "patch", p.Patch
					case *annotations.HttpRule_Delete:
						method, path = "delete", p.Delete
					case *annotations.HttpRule_Custom:
						method, path = strings.ToLower(p.Custom.GetKind()), p.Custom.GetPath()
					}
					rules = append(rules, httpRule{method, path, m.IsStreamingServer(), string(m.FullName())})
				}
			}
		}
		return true
	})
	if len(rules) < 20 {
		t.Fatalf("only %d HTTP rules found in the proto registry", len(rules))
	}
	return rules
}

type oaOperation struct {
	OperationID string `json:"operationId"`
	Parameters  []struct {
		Ref  string `json:"$ref"`
		Name string `json:"name"`
		In   string `json:"in"`
	} `json:"parameters"`
	Responses map[string]struct {
		Content map[string]struct {
			Events []string `json:"x-sse-events"`
		} `json:"content"`
	} `json:"responses"`
}

func TestOpenAPI31Reference(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	resp, body := in.Do(t, "GET", "/openapi.json", "", "")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("/openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var doc struct {
		OpenAPI    string                            `json:"openapi"`
		Paths      map[string]map[string]oaOperation `json:"paths"`
		Components struct {
			Parameters      map[string]struct{ Name, In string } `json:"parameters"`
			SecuritySchemes map[string]struct {
				Type, In, Name, Scheme string
			} `json:"securitySchemes"`
		} `json:"components"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}

	// Every REST route the gateway registers, from the protos' http rules;
	// the streamed ones as text/event-stream.
	for _, r := range protoHTTPRules(t) {
		op, ok := doc.Paths[r.path][r.method]
		if !ok {
			t.Errorf("%s %s (%s) is not in /openapi.json", r.method, r.path, r.rpc)
			continue
		}
		sse, isSSE := op.Responses["200"].Content["text/event-stream"]
		if r.streaming && (!isSSE || len(sse.Events) == 0) {
			t.Errorf("%s %s (%s) streams but is not described as text/event-stream with its events", r.method, r.path, r.rpc)
		}
	}
	// POST …/messages is SendMessage in the protos, but streams by default
	// (server/http.go's dispatcher): both answers are described.
	send := doc.Paths["/v1/kgent/sessions/{session_id}/messages"]["post"].Responses["200"].Content
	if _, ok := send["application/json"]; !ok {
		t.Error("POST …/messages lacks its JSON answer")
	}
	if _, ok := send["text/event-stream"]; !ok {
		t.Error("POST …/messages lacks its text/event-stream answer")
	}

	events := func(path, method string) string {
		return strings.Join(doc.Paths[path][method].Responses["200"].Content["text/event-stream"].Events, ",")
	}
	for path, want := range map[string]string{
		"/v1/kgent/sessions/{session_id}/events":          "chunk,complete,end,error,message,mode,reset",
		"/v1/kgent/sessions/{session_id}/messages:stream": "chunk,complete,end,error,message,mode,reset",
		"/v1/soul/dialogue:stream":                        "chunk,complete,error",
		"/v1/agentese/invoke:stream":                      "chunk,complete,error",
	} {
		method := "post"
		if strings.HasSuffix(path, "/events") {
			method = "get"
		}
		if got := events(path, method); got != want {
			t.Errorf("%s events %q, want %q", path, got, want)
		}
	}

	// Parameters and security schemes.
	params := func(path, method string) map[string]bool {
		got := map[string]bool{}
		for _, p := range doc.Paths[path][method].Parameters {
			if name, ok := strings.CutPrefix(p.Ref, "#/components/parameters/"); ok {
				got[doc.Components.Parameters[name].In+":"+doc.Components.Parameters[name].Name] = true
			} else {
				got[p.In+":"+p.Name] = true
			}
		}
		return got
	}
	for _, c := range []struct{ path, method, param string }{
		{"/v1/kgent/sessions/{session_id}/events", "get", "header:Last-Event-ID"},
		{"/v1/kgent/sessions/{session_id}/events", "get", "query:api_key"},
		{"/v1/kgent/sessions", "post", "header:Idempotency-Key"},
		{"/v1/kgent/sessions/{session_id}/messages", "post", "header:Idempotency-Key"},
		{"/v1/kgent/sessions/{session_id}/messages:stream", "post", "header:Idempotency-Key"},
	} {
		if !params(c.path, c.method)[c.param] {
			t.Errorf("%s %s lacks the parameter %s", c.method, c.path, c.param)
		}
	}
	if s := doc.Components.SecuritySchemes["ApiKey"]; s.Type != "apiKey" || s.In != "header" || s.Name != "X-API-Key" {
		t.Errorf("ApiKey security scheme = %+v", s)
	}
	if s := doc.Components.SecuritySchemes["Bearer"]; s.Type != "http" || s.Scheme != "bearer" {
		t.Errorf("Bearer security scheme = %+v", s)
	}

	// The routes served beside the gateway.
	for path, method := range map[string]string{
		"/": "get", "/health": "get", "/health/saas": "get", "/livez": "get", "/readyz": "get",
		"/openapi.json": "get", "/openapi/v2.json": "get", "/docs": "get",
		"/webhooks/stripe": "post", "/webhooks/stripe/health": "get",
	} {
		if _, ok := doc.Paths[path][method]; !ok {
			t.Errorf("/openapi.json lacks %s %s", method, path)
		}
	}

	// Swagger 2 moved to /openapi/v2.json; /docs is the interactive reference.
	resp, body = in.Do(t, "GET", "/openapi/v2.json", "", "")
	var v2 struct {
		Swagger string `json:"swagger"`
	}
	if err := json.Unmarshal(body, &v2); err != nil || resp.StatusCode != 200 || v2.Swagger != "2.0" {
		t.Errorf("/openapi/v2.json: %d %q %v", resp.StatusCode, v2.Swagger, err)
	}
	for _, path := range []string{"/docs", "/docs/"} {
		resp, body = in.Do(t, "GET", path, "", "")
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
			!strings.Contains(string(body), "/docs/swagger-ui-bundle.js") ||
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("%s: %d %s %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy"))
		}
	}
	for _, path := range []string{"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/reference.js"} {
		if resp, body := in.Do(t, "GET", path, "", ""); resp.StatusCode != 200 || len(body) == 0 {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
	if resp, _ := in.Do(t, "GET", "/docs/nope.js", "", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/docs/nope.js: %d, want 404", resp.StatusCode)
	}
}
