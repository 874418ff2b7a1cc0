package main

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

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
