package server_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/kgents/kgents-go/server/servertest"
)

// A key made through the API is a key everywhere, also where the HTTP
// layer answers before the chain (an oversized body is 413, not 401).
func TestManagedKeyInTheHTTPLayer(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, nil)
	r, body := in.Do(t, "POST", "/v1/signup", "", `{"email":"managed@example.com","name":"Managed"}`)
	mustStatus(t, r, body, http.StatusOK)
	var created struct {
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(body, &created); err != nil || !strings.HasPrefix(created.Secret, "kg_live_") {
		t.Fatalf("signed-up key: %s (%v)", body, err)
	}
	big := `{"prompt":"` + strings.Repeat("x", 2<<20) + `"}`
	r, body = in.Do(t, "POST", "/v1/soul/dialogue", created.Secret, big)
	if r.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body with a managed key: %d %s, want 413", r.StatusCode, body)
	}
	r, _ = in.Do(t, "POST", "/v1/soul/dialogue", "kg_live_notakeyatallnotakeyatall0000", big)
	if r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("oversized body with an unknown key: %d, want 401", r.StatusCode)
	}
}
