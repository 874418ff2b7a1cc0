package main

import (
	"bytes"
	"encoding/hex"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/tenancy"
)

func TestKeygen(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-tenant", "6a0c5e58-3c1e-4f0e-9e7e-2b2a3f1d8c11", "-user", "u1", "-scopes", "read,write"}, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	key := strings.TrimSpace(lines[1])
	if !strings.HasPrefix(key, "kg_") || len(key) < 40 {
		t.Fatalf("key %q", key)
	}
	h := tenancy.HashKey(key)
	if !strings.Contains(out.String(), hex.EncodeToString(h[:])) {
		t.Errorf("entry does not carry the key's hash:\n%s", out.String())
	}
	for _, bad := range [][]string{{"-user", "u"}, {"-tenant", "x", "-user", "u"}, {"-tenant", "6a0c5e58-3c1e-4f0e-9e7e-2b2a3f1d8c11"}, {"-tenant", "6a0c5e58-3c1e-4f0e-9e7e-2b2a3f1d8c11", "-user", "u", "-scopes", "root"}} {
		if err := run(bad, &out); err == nil {
			t.Errorf("run(%v) succeeded", bad)
		}
	}
}

// Operator mode against a real kgentsd: a tenant and its key, which works.
func TestKeygenOperatorMode(t *testing.T) {
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false"})
	var out bytes.Buffer
	args := []string{"-server", in.URL, "-operator-key", "kg_dev_ops", "-tenant-name", "Acme", "-email", "ops@acme.example",
		"-tier", "pro", "-scopes", "read,write,admin", "-key-name", "root"}
	if err := run(args, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	secret := regexp.MustCompile(`kg_live_[A-Za-z0-9]+`).FindString(out.String())
	tenant := regexp.MustCompile(`Tenant created: ([0-9a-f-]{36})`).FindStringSubmatch(out.String())
	if secret == "" || tenant == nil {
		t.Fatalf("output:\n%s", out.String())
	}
	resp, b := in.Do(t, "GET", "/v1/tenant", secret, "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), tenant[1]) || !strings.Contains(string(b), `"tier":"pro"`) {
		t.Fatalf("GET /v1/tenant with the new key: %d %s", resp.StatusCode, b)
	}
	// A second key for the same tenant; then refusals say why.
	out.Reset()
	if err := run([]string{"-server", in.URL, "-operator-key", "kg_dev_ops", "-tenant", tenant[1], "-scopes", "read"}, &out); err != nil || !strings.Contains(out.String(), "kg_live_") {
		t.Fatalf("second key: %v\n%s", err, out.String())
	}
	err := run([]string{"-server", in.URL, "-operator-key", "kg_dev_carol", "-tenant-name", "X", "-email", "x@example.com"}, &out)
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "operator") {
		t.Errorf("non-operator key: %v", err)
	}
	t.Setenv("KGENTS_OPERATOR_KEY", "")
	if err := run([]string{"-server", in.URL, "-tenant-name", "X", "-email", "x@example.com"}, &out); err == nil {
		t.Error("operator mode without a key succeeded")
	}
	if err := run([]string{"-server", in.URL, "-operator-key", "kg_dev_ops"}, &out); err == nil {
		t.Error("operator mode without a tenant succeeded")
	}
}
