package server

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/kgents/kgents-go/config"
	"github.com/kgents/kgents-go/gen/openapi"
	"github.com/kgents/kgents-go/tenancy"
)

// TestEveryRegisteredMethodHasAPolicy: an RPC registered on the gRPC server
// without a row in the policy table would be refused by auth (safe, but a
// broken route); a row naming no registered method is a typo.
func TestEveryRegisteredMethodHasAPolicy(t *testing.T) {
	cfg, err := config.Load(config.MapLookup(map[string]string{
		"LISTEN_HOST": "127.0.0.1", "HTTP_PORT": "0", "GRPC_PORT": "0", "NATS_ENABLED": "false",
		"KGENTS_DATA_DIR": t.TempDir(), "KGENTS_DEV_KEYS": "true",
	}))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.runClosers(context.Background()) })
	table := policies(func(any) (tenancy.Scope, string) { return tenancy.ScopeRead, "" })
	registered := map[string]bool{}
	for svc, info := range s.grpc.GetServiceInfo() {
		public := false
		for _, p := range publicServices {
			public = public || p == svc
		}
		for _, m := range info.Methods {
			full := "/" + svc + "/" + m.Name
			registered[full] = true
			if _, ok := table[full]; !ok && !public {
				t.Errorf("%s is registered without a policy", full)
			}
		}
	}
	for m, p := range table {
		if !registered[m] {
			t.Errorf("policy for %s, which is not registered", m)
		}
		if !p.auth.Public && p.auth.Scope == 0 && p.auth.ScopeFor == nil && !strings.HasPrefix(m, "/grpc.") {
			t.Errorf("%s needs no scope", m)
		}
	}
}

// TestIdempotencyKeyIsDeclaredWhereHonoured: the RPCs whose policy honours
// Idempotency-Key (from their (kgents.api.v1.idempotent) option) are the
// operations /openapi.json declares the parameter on, no more, no fewer;
// and the ones docs/api.md has always named are among them.
func TestIdempotencyKeyIsDeclaredWhereHonoured(t *testing.T) {
	t.Parallel()
	table := policies(func(any) (tenancy.Scope, string) { return tenancy.ScopeRead, "" })
	honoured := map[string]bool{}
	for m, p := range table {
		if p.idempotent {
			svc := m[strings.LastIndex(m[:strings.LastIndex(m, "/")], ".")+1 : strings.LastIndex(m, "/")]
			honoured[svc+"_"+m[strings.LastIndex(m, "/")+1:]] = true
		}
	}
	for _, op := range []string{"SessionsService_CreateSession", "SessionsService_SendMessage", "SessionsService_StreamMessage",
		"AdminService_CreateTenant", "BillingService_CreateCheckoutSession"} {
		if !honoured[op] {
			t.Errorf("%s does not honour Idempotency-Key any more", op)
		}
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openapi.Document, &doc); err != nil {
		t.Fatal(err)
	}
	declared := map[string]bool{}
	for _, item := range doc.Paths {
		for _, raw := range item {
			var op struct {
				OperationID string `json:"operationId"`
				Parameters  []struct {
					Ref string `json:"$ref"`
				} `json:"parameters"`
			}
			if json.Unmarshal(raw, &op) != nil {
				continue
			}
			for _, p := range op.Parameters {
				if p.Ref == "#/components/parameters/IdempotencyKey" {
					declared[op.OperationID] = true
				}
			}
		}
	}
	if !maps.Equal(honoured, declared) {
		t.Errorf("Idempotency-Key honoured by %v but declared in /openapi.json on %v: run make generate", slices.Sorted(maps.Keys(honoured)), slices.Sorted(maps.Keys(declared)))
	}
}
