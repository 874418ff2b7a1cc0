package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "github.com/kgents/kgents-go/gen/kgents/admin/v1"
	tenantsv1 "github.com/kgents/kgents-go/gen/kgents/tenants/v1"
	"github.com/kgents/kgents-go/server/servertest"
)

// REST tests of the control plane's API surface (SPEC §4.13): every route's
// happy path, scopes, bad input, secrets shown once.

const ops = "kg_dev_ops" // read, write, admin, operator; tenant …0004, enterprise

type apiTenant struct {
	ID                   string  `json:"id"`
	Name                 string  `json:"name"`
	Email                string  `json:"email"`
	Tier                 string  `json:"tier"`
	Status               string  `json:"status"`
	Limits               limits  `json:"limits"`
	StripeCustomerID     string  `json:"stripe_customer_id"`
	StripeSubscriptionID string  `json:"stripe_subscription_id"`
	GraceUntil           *string `json:"grace_until"`
	CreatedAt            *string `json:"created_at"`
	UpdatedAt            *string `json:"updated_at"`
	ReadOnly             bool    `json:"read_only"`
}

type limits struct {
	RequestsPerMinute *int64 `json:"requests_per_minute"`
	RequestsPerDay    *int64 `json:"requests_per_day"`
	TokensPerMonth    *int64 `json:"tokens_per_month"`
}

type apiKey struct {
	ID         string   `json:"id"`
	TenantID   string   `json:"tenant_id"`
	Name       string   `json:"name"`
	Prefix     string   `json:"prefix"`
	Scopes     []string `json:"scopes"`
	Archetypes []string `json:"archetypes"`
	ExpiresAt  *string  `json:"expires_at"`
	CreatedAt  *string  `json:"created_at"`
	LastUsedAt *string  `json:"last_used_at"`
	RevokedAt  *string  `json:"revoked_at"`
	ReadOnly   bool     `json:"read_only"`
}

type keyWithSecret struct {
	Key    apiKey `json:"key"`
	Secret string `json:"secret"`
}

func startControlPlane(t *testing.T, env map[string]string) *servertest.Instance {
	t.Helper()
	if env == nil {
		env = map[string]string{}
	}
	if _, ok := env["KGENTS_SIGNUP"]; !ok {
		env["KGENTS_SIGNUP"] = "open"
	}
	return servertest.Start(t, env)
}

// createTenant makes a tenant through the operator API.
func createTenant(t *testing.T, in *servertest.Instance, name, email, tier string) apiTenant {
	t.Helper()
	body := fmt.Sprintf(`{"name":%q,"email":%q,"tier":%q}`, name, email, tier)
	if tier == "" {
		body = fmt.Sprintf(`{"name":%q,"email":%q}`, name, email)
	}
	resp, b := in.Do(t, "POST", "/v1/admin/tenants", ops, body)
	mustStatus(t, resp, b, http.StatusOK)
	return decode[apiTenant](t, b)
}

// tenantAdmin makes a tenant with an admin key and returns both.
func tenantAdmin(t *testing.T, in *servertest.Instance, email string) (apiTenant, keyWithSecret) {
	t.Helper()
	tn := createTenant(t, in, "Acme "+email, email, "pro")
	resp, b := in.Do(t, "POST", "/v1/admin/tenants/"+tn.ID+"/keys", ops, `{"name":"root","scopes":["read","write","admin"],"archetypes":["developer","architect"]}`)
	mustStatus(t, resp, b, http.StatusOK)
	return tn, decode[keyWithSecret](t, b)
}

func TestControlPlaneOperatorRoutes(t *testing.T) {
	t.Parallel()
	in := startControlPlane(t, nil)

	// POST /v1/admin/tenants
	tn := createTenant(t, in, "Acme", "Billing@Acme.example", "pro")
	if tn.ID == "" || tn.Name != "Acme" || tn.Email != "Billing@Acme.example" || tn.Tier != "pro" || tn.Status != "active" || tn.ReadOnly {
		t.Fatalf("created tenant %+v", tn)
	}
	if tn.CreatedAt == nil || tn.Limits.RequestsPerMinute != nil || tn.GraceUntil != nil {
		t.Errorf("created tenant %+v", tn)
	}
	if _, err := time.Parse(time.RFC3339, *tn.CreatedAt); err != nil {
		t.Errorf("created_at %q: %v", *tn.CreatedAt, err)
	}
	// The same email, in another case, is taken.
	resp, b := in.Do(t, "POST", "/v1/admin/tenants", ops, `{"name":"Other","email":"billing@acme.EXAMPLE","tier":"free"}`)
	mustStatus(t, resp, b, http.StatusConflict)
	// Idempotency-Key: the repeat is the first answer, replayed.
	resp, b = in.Do(t, "POST", "/v1/admin/tenants", ops, `{"name":"Idem","email":"idem@example.com"}`, "Idempotency-Key", "create-idem-1")
	mustStatus(t, resp, b, http.StatusOK)
	first := decode[apiTenant](t, b)
	resp, b = in.Do(t, "POST", "/v1/admin/tenants", ops, `{"name":"Idem","email":"idem@example.com"}`, "Idempotency-Key", "create-idem-1")
	mustStatus(t, resp, b, http.StatusOK)
	if again := decode[apiTenant](t, b); again.ID != first.ID || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replayed create: %s (%v)", b, resp.Header)
	}
	// The tier defaults to free.
	free := createTenant(t, in, "Tiny", "tiny@example.com", "")
	if free.Tier != "free" {
		t.Errorf("tier left out: %q, want free", free.Tier)
	}

	// GET /v1/admin/tenants/{id}
	resp, b = in.Do(t, "GET", "/v1/admin/tenants/"+tn.ID, ops, "")
	mustStatus(t, resp, b, http.StatusOK)
	if got := decode[apiTenant](t, b); got.ID != tn.ID || got.Email != tn.Email {
		t.Errorf("GET tenant %+v", got)
	}
	resp, b = in.Do(t, "GET", "/v1/admin/tenants/7d0b8c1e-0000-4000-8000-000000000000", ops, "")
	mustStatus(t, resp, b, http.StatusNotFound)

	// PATCH /v1/admin/tenants/{id}: only what is given changes.
	resp, b = in.Do(t, "PATCH", "/v1/admin/tenants/"+tn.ID, ops, `{"tier":"enterprise","limits":{"requests_per_minute":5,"tokens_per_month":0}}`)
	mustStatus(t, resp, b, http.StatusOK)
	up := decode[apiTenant](t, b)
	if up.Tier != "enterprise" || up.Name != "Acme" || up.Status != "active" {
		t.Errorf("patched tenant %+v", up)
	}
	if up.Limits.RequestsPerMinute == nil || *up.Limits.RequestsPerMinute != 5 || up.Limits.TokensPerMonth == nil || *up.Limits.TokensPerMonth != 0 || up.Limits.RequestsPerDay != nil {
		t.Errorf("patched limits %+v", up.Limits)
	}
	resp, b = in.Do(t, "PATCH", "/v1/admin/tenants/"+tn.ID, ops, `{"name":"Acme Inc","status":"past_due"}`)
	mustStatus(t, resp, b, http.StatusOK)
	if up := decode[apiTenant](t, b); up.Name != "Acme Inc" || up.Status != "past_due" || up.Tier != "enterprise" {
		t.Errorf("patched tenant %+v", up)
	}

	// GET /v1/admin/tenants with filters and paging.
	resp, b = in.Do(t, "GET", "/v1/admin/tenants?limit=1&offset=0", ops, "")
	mustStatus(t, resp, b, http.StatusOK)
	page := decode[struct {
		Tenants []apiTenant `json:"tenants"`
		Total   int         `json:"total"`
	}](t, b)
	if len(page.Tenants) != 1 || page.Total < 2 {
		t.Errorf("page of 1: %d tenants, total %d", len(page.Tenants), page.Total)
	}
	resp, b = in.Do(t, "GET", "/v1/admin/tenants?tier=enterprise&status=past_due&q=acme", ops, "")
	mustStatus(t, resp, b, http.StatusOK)
	page = decode[struct {
		Tenants []apiTenant `json:"tenants"`
		Total   int         `json:"total"`
	}](t, b)
	if page.Total != 1 || len(page.Tenants) != 1 || page.Tenants[0].ID != tn.ID {
		t.Errorf("filtered: %+v", page)
	}

	// POST and GET /v1/admin/tenants/{id}/keys
	resp, b = in.Do(t, "POST", "/v1/admin/tenants/"+free.ID+"/keys", ops, `{"name":"ci","scopes":["read"]}`)
	mustStatus(t, resp, b, http.StatusOK)
	k := decode[keyWithSecret](t, b)
	if !strings.HasPrefix(k.Secret, "kg_live_") || k.Key.TenantID != free.ID || k.Key.Prefix != k.Secret[:12] ||
		strings.Join(k.Key.Scopes, ",") != "read" || strings.Join(k.Key.Archetypes, ",") != "developer" || k.Key.RevokedAt != nil {
		t.Fatalf("created key %+v", k)
	}
	resp, b = in.Do(t, "GET", "/v1/admin/tenants/"+free.ID+"/keys", ops, "")
	mustStatus(t, resp, b, http.StatusOK)
	if strings.Contains(string(b), k.Secret) || strings.Contains(string(b), "secret") {
		t.Errorf("key listing shows the secret: %s", b)
	}
	keys := decode[struct {
		Keys []apiKey `json:"keys"`
	}](t, b)
	if len(keys.Keys) != 1 || keys.Keys[0].ID != k.Key.ID {
		t.Errorf("keys %+v", keys)
	}
	resp, b = in.Do(t, "GET", "/v1/admin/tenants/7d0b8c1e-0000-4000-8000-000000000000/keys", ops, "")
	mustStatus(t, resp, b, http.StatusNotFound)

	// The key works at once, for its own tenant.
	resp, b = in.Do(t, "GET", "/v1/tenant", k.Secret, "")
	mustStatus(t, resp, b, http.StatusOK)
	if got := decode[apiTenant](t, b); got.ID != free.ID {
		t.Errorf("GET /v1/tenant with the new key: %+v", got)
	}

	// GET /v1/admin/tenants/{id}/usage
	resp, b = in.Do(t, "GET", "/v1/admin/tenants/"+tn.ID+"/usage", ops, "")
	mustStatus(t, resp, b, http.StatusOK)
	u := decode[struct {
		TenantID string `json:"tenant_id"`
		Tier     string `json:"tier"`
		Period   string `json:"period"`
		Limits   struct {
			RequestsPerMinute int64 `json:"requests_per_minute"`
			RequestsPerDay    int64 `json:"requests_per_day"`
		} `json:"limits"`
	}](t, b)
	if u.TenantID != tn.ID || u.Tier != "enterprise" || u.Limits.RequestsPerMinute != 5 || u.Limits.RequestsPerDay != 10_000 || u.Period == "" {
		t.Errorf("usage %s", b)
	}

	// POST /v1/admin/invites
	resp, b = in.Do(t, "POST", "/v1/admin/invites", ops, `{"tier":"pro","expires_in":3600}`)
	mustStatus(t, resp, b, http.StatusOK)
	inv := decode[struct {
		Code      string `json:"code"`
		ExpiresAt string `json:"expires_at"`
		Tier      string `json:"tier"`
	}](t, b)
	exp, err := time.Parse(time.RFC3339, inv.ExpiresAt)
	if inv.Code == "" || err != nil || inv.Tier != "pro" || time.Until(exp) > time.Hour+time.Minute || time.Until(exp) < 59*time.Minute {
		t.Errorf("invite %s (%v)", b, err)
	}
	resp, b = in.Do(t, "POST", "/v1/admin/invites", ops, `{}`)
	mustStatus(t, resp, b, http.StatusOK)

	// GET /v1/admin/audit: newest first, per tenant, paged with before.
	resp, b = in.Do(t, "GET", "/v1/admin/audit?tenant_id="+tn.ID, ops, "")
	mustStatus(t, resp, b, http.StatusOK)
	type entry struct {
		ID       string                            `json:"id"`
		Time     string                            `json:"time"`
		Actor    string                            `json:"actor"`
		TenantID string                            `json:"tenant_id"`
		Action   string                            `json:"action"`
		Detail   map[string]struct{ Old, New any } `json:"detail"`
	}
	entries := decode[struct {
		Entries []entry `json:"entries"`
	}](t, b).Entries
	var actions []string
	for _, e := range entries {
		actions = append(actions, e.Action)
		if e.TenantID != tn.ID || e.Actor == "" || e.ID == "" {
			t.Errorf("entry %+v", e)
		}
	}
	if strings.Join(actions, ",") != "tenant.update,tenant.update,tenant.create" {
		t.Fatalf("audit actions %v, want the two updates then the create", actions)
	}
	if d := entries[1].Detail["tier"]; d.Old != "pro" || d.New != "enterprise" {
		t.Errorf("tier change recorded as %+v", d)
	}
	resp, b = in.Do(t, "GET", "/v1/admin/audit?limit=1&tenant_id="+tn.ID+"&before="+url.QueryEscape(entries[0].Time), ops, "")
	mustStatus(t, resp, b, http.StatusOK)
	if got := decode[struct {
		Entries []entry `json:"entries"`
	}](t, b).Entries; len(got) != 1 || got[0].ID == entries[0].ID {
		t.Errorf("page before the newest: %+v", got)
	}
	if strings.Contains(string(b), k.Secret) {
		t.Error("the audit log shows a secret")
	}
}

func TestControlPlaneSelfService(t *testing.T) {
	t.Parallel()
	in := startControlPlane(t, nil)
	tn, root := tenantAdmin(t, in, "self@example.com")

	// GET /v1/tenant
	resp, b := in.Do(t, "GET", "/v1/tenant", root.Secret, "")
	mustStatus(t, resp, b, http.StatusOK)
	if got := decode[apiTenant](t, b); got.ID != tn.ID || got.Tier != "pro" {
		t.Errorf("GET /v1/tenant: %+v", got)
	}
	// A dev key's tenant is read-only.
	resp, b = in.Do(t, "GET", "/v1/tenant", carol, "")
	mustStatus(t, resp, b, http.StatusOK)
	if got := decode[apiTenant](t, b); got.ID != "00000000-0000-0000-0000-000000000003" || !got.ReadOnly || got.Tier != "enterprise" {
		t.Errorf("carol's tenant: %+v", got)
	}

	// POST /v1/keys, then the new key works at once.
	exp := time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
	resp, b = in.Do(t, "POST", "/v1/keys", root.Secret, `{"name":"worker","scopes":["read","write"],"archetypes":["architect"],"expires_at":"`+exp+`"}`)
	mustStatus(t, resp, b, http.StatusOK)
	worker := decode[keyWithSecret](t, b)
	if worker.Key.ExpiresAt == nil || strings.Join(worker.Key.Scopes, ",") != "read,write" || strings.Join(worker.Key.Archetypes, ",") != "architect" || worker.Key.TenantID != tn.ID {
		t.Errorf("worker key %+v", worker.Key)
	}
	resp, b = in.Do(t, "POST", "/v1/kgent/sessions", worker.Secret, `{"title":"hello"}`)
	mustStatus(t, resp, b, http.StatusOK)
	if s := decode[session](t, b); s.TenantID != tn.ID {
		t.Errorf("session of the new key's tenant %s, want %s", s.TenantID, tn.ID)
	}

	// GET /v1/keys: no secret, ever.
	resp, b = in.Do(t, "GET", "/v1/keys", root.Secret, "")
	mustStatus(t, resp, b, http.StatusOK)
	for _, s := range []string{root.Secret, worker.Secret, `"secret"`} {
		if strings.Contains(string(b), s) {
			t.Errorf("GET /v1/keys contains %q: %s", s, b)
		}
	}
	if ks := decode[struct {
		Keys []apiKey `json:"keys"`
	}](t, b).Keys; len(ks) != 2 {
		t.Errorf("keys %+v", ks)
	}

	// No escalation: a key grants only what it holds.
	resp, b = in.Do(t, "POST", "/v1/keys", root.Secret, `{"name":"x","scopes":["operator"]}`)
	mustStatus(t, resp, b, http.StatusForbidden)
	resp, b = in.Do(t, "POST", "/v1/keys", root.Secret, `{"name":"x","scopes":["read"],"archetypes":["poet"]}`)
	mustStatus(t, resp, b, http.StatusForbidden)

	// POST /v1/keys/{key_id}:rotate: a new secret; the old one works during the grace.
	resp, b = in.Do(t, "POST", "/v1/keys/"+worker.Key.ID+":rotate", root.Secret, `{"grace_seconds":600}`)
	mustStatus(t, resp, b, http.StatusOK)
	rotated := decode[keyWithSecret](t, b)
	if rotated.Key.ID == worker.Key.ID || rotated.Secret == worker.Secret || rotated.Key.Name != "worker" ||
		strings.Join(rotated.Key.Scopes, ",") != "read,write" || strings.Join(rotated.Key.Archetypes, ",") != "architect" {
		t.Errorf("rotated %+v", rotated.Key)
	}
	for _, key := range []string{worker.Secret, rotated.Secret} {
		resp, b = in.Do(t, "GET", "/v1/kgent/sessions", key, "")
		mustStatus(t, resp, b, http.StatusOK)
	}
	// The default grace, from an empty body.
	resp, b = in.Do(t, "POST", "/v1/keys/"+rotated.Key.ID+":rotate", root.Secret, ``)
	mustStatus(t, resp, b, http.StatusOK)

	// DELETE /v1/keys/{key_id}: the key with revoked_at; then 401.
	resp, b = in.Do(t, "DELETE", "/v1/keys/"+worker.Key.ID, root.Secret, "")
	mustStatus(t, resp, b, http.StatusOK)
	if k := decode[apiKey](t, b); k.ID != worker.Key.ID || k.RevokedAt == nil || strings.Contains(string(b), worker.Secret) {
		t.Errorf("revoked %s", b)
	}
	resp, b = in.Do(t, "GET", "/v1/kgent/sessions", worker.Secret, "")
	mustStatus(t, resp, b, http.StatusUnauthorized)

	// Another tenant's key id is 404, not 403.
	_, other := tenantAdmin(t, in, "other@example.com")
	resp, b = in.Do(t, "DELETE", "/v1/keys/"+other.Key.ID, root.Secret, "")
	mustStatus(t, resp, b, http.StatusNotFound)
	resp, b = in.Do(t, "POST", "/v1/keys/"+other.Key.ID+":rotate", root.Secret, `{}`)
	mustStatus(t, resp, b, http.StatusNotFound)
	resp, b = in.Do(t, "DELETE", "/v1/keys/key_doesnotexist", root.Secret, "")
	mustStatus(t, resp, b, http.StatusNotFound)

	// A dev key is read-only: carol (admin) lists it, cannot revoke it.
	resp, b = in.Do(t, "GET", "/v1/keys", carol, "")
	mustStatus(t, resp, b, http.StatusOK)
	carolKeys := decode[struct {
		Keys []apiKey `json:"keys"`
	}](t, b).Keys
	if len(carolKeys) == 0 || !carolKeys[0].ReadOnly {
		t.Fatalf("carol's keys %s", b)
	}
	resp, b = in.Do(t, "DELETE", "/v1/keys/"+carolKeys[0].ID, carol, "")
	mustStatus(t, resp, b, http.StatusConflict)
	// carol may create a managed key in her read-only tenant? Either the
	// Manager refuses it as read-only (409) or it makes one (200); never 500.
	resp, b = in.Do(t, "POST", "/v1/keys", carol, `{"name":"x","scopes":["read"]}`)
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusConflict {
		t.Errorf("carol creates a key: %d %s", resp.StatusCode, b)
	}
}

func TestControlPlaneScopes(t *testing.T) {
	t.Parallel()
	in := startControlPlane(t, nil)
	tn := createTenant(t, in, "Scoped", "scoped@example.com", "free")
	const id = "7d0b8c1e-0000-4000-8000-000000000000"

	// Every operator route refuses a non-operator (carol has admin).
	operatorRoutes := []struct{ method, path, body string }{
		{"POST", "/v1/admin/tenants", `{"name":"x","email":"x@example.com","tier":"free"}`},
		{"GET", "/v1/admin/tenants", ""},
		{"GET", "/v1/admin/tenants/" + tn.ID, ""},
		{"PATCH", "/v1/admin/tenants/" + tn.ID, `{"status":"suspended"}`},
		{"GET", "/v1/admin/tenants/" + tn.ID + "/keys", ""},
		{"POST", "/v1/admin/tenants/" + tn.ID + "/keys", `{"name":"x","scopes":["read"]}`},
		{"GET", "/v1/admin/tenants/" + tn.ID + "/usage", ""},
		{"POST", "/v1/admin/invites", `{}`},
		{"GET", "/v1/admin/audit", ""},
		{"GET", "/v1/admin/audit?tenant_id=" + id, ""},
	}
	for _, key := range []string{carol, bob, alice} {
		for _, r := range operatorRoutes {
			resp, b := in.Do(t, r.method, r.path, key, r.body)
			mustStatus(t, resp, b, http.StatusForbidden)
			if e := decode[errBody](t, b); !strings.Contains(e.Detail, "'operator' scope") {
				t.Errorf("%s %s with %s: %s", r.method, r.path, key, b)
			}
		}
	}
	// Without a key: 401.
	for _, r := range operatorRoutes {
		resp, b := in.Do(t, r.method, r.path, "", r.body)
		mustStatus(t, resp, b, http.StatusUnauthorized)
	}

	// Self-service key routes refuse a non-admin; GET /v1/tenant needs read.
	selfRoutes := []struct{ method, path, body string }{
		{"POST", "/v1/keys", `{"name":"x","scopes":["read"]}`},
		{"GET", "/v1/keys", ""},
		{"DELETE", "/v1/keys/key_abc", ""},
		{"POST", "/v1/keys/key_abc:rotate", `{}`},
	}
	for _, key := range []string{bob, alice} {
		for _, r := range selfRoutes {
			resp, b := in.Do(t, r.method, r.path, key, r.body)
			mustStatus(t, resp, b, http.StatusForbidden)
			if e := decode[errBody](t, b); !strings.Contains(e.Detail, "'admin' scope") {
				t.Errorf("%s %s with %s: %s", r.method, r.path, key, b)
			}
		}
		resp, b := in.Do(t, "GET", "/v1/tenant", key, "")
		mustStatus(t, resp, b, http.StatusOK)
	}
	for _, r := range selfRoutes {
		resp, b := in.Do(t, r.method, r.path, "", r.body)
		mustStatus(t, resp, b, http.StatusUnauthorized)
	}

	// Over gRPC too.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := adminv1.NewAdminServiceClient(in.Conn).ListTenants(servertest.Key(ctx, carol), &adminv1.ListTenantsRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC ListTenants with carol: %v", err)
	}
	r, err := adminv1.NewAdminServiceClient(in.Conn).ListTenants(servertest.Key(ctx, ops), &adminv1.ListTenantsRequest{})
	if err != nil || r.GetTotal() < 1 {
		t.Errorf("gRPC ListTenants with ops: %v %v", r, err)
	}
	_, err = tenantsv1.NewTenantsServiceClient(in.Conn).ListKeys(servertest.Key(ctx, bob), &tenantsv1.ListKeysRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC ListKeys with bob: %v", err)
	}
}

// A suspended tenant still reads its tenant and its keys, and nothing else.
func TestControlPlaneSuspendedTenant(t *testing.T) {
	t.Parallel()
	in := startControlPlane(t, nil)
	tn, root := tenantAdmin(t, in, "late@example.com")
	resp, b := in.Do(t, "PATCH", "/v1/admin/tenants/"+tn.ID, ops, `{"status":"suspended"}`)
	mustStatus(t, resp, b, http.StatusOK)

	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, b = in.Do(t, "GET", "/v1/kgent/sessions", root.Secret, "")
		if resp.StatusCode == http.StatusPaymentRequired || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	mustStatus(t, resp, b, http.StatusPaymentRequired)
	if e := decode[errBody](t, b); e.Code != "tenant_suspended" {
		t.Errorf("suspended: %s", b)
	}
	resp, b = in.Do(t, "GET", "/v1/tenant", root.Secret, "")
	mustStatus(t, resp, b, http.StatusOK)
	if got := decode[apiTenant](t, b); got.Status != "suspended" {
		t.Errorf("GET /v1/tenant of a suspended tenant: %+v", got)
	}
	resp, b = in.Do(t, "GET", "/v1/keys", root.Secret, "")
	mustStatus(t, resp, b, http.StatusOK)
	resp, b = in.Do(t, "POST", "/v1/keys", root.Secret, `{"name":"x","scopes":["read"]}`)
	mustStatus(t, resp, b, http.StatusPaymentRequired)
}

func TestControlPlaneBadInput(t *testing.T) {
	t.Parallel()
	in := startControlPlane(t, nil)
	tn, root := tenantAdmin(t, in, "bad@example.com")
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	long := strings.Repeat("x", 201)
	cases := []struct {
		key, method, path, body, field string
	}{
		// Self-service.
		{root.Secret, "POST", "/v1/keys", `{"scopes":["read"]}`, "name"},
		{root.Secret, "POST", "/v1/keys", `{"name":"","scopes":["read"]}`, "name"},
		{root.Secret, "POST", "/v1/keys", `{"name":"` + long + `","scopes":["read"]}`, "name"},
		{root.Secret, "POST", "/v1/keys", `{"name":"x"}`, "scopes"},
		{root.Secret, "POST", "/v1/keys", `{"name":"x","scopes":[]}`, "scopes"},
		{root.Secret, "POST", "/v1/keys", `{"name":"x","scopes":["root"]}`, "scopes"},
		{root.Secret, "POST", "/v1/keys", `{"name":"x","scopes":["read","read"]}`, "scopes"},
		{root.Secret, "POST", "/v1/keys", `{"name":"x","scopes":["read"],"archetypes":["wizard"]}`, "archetypes"},
		{root.Secret, "POST", "/v1/keys", `{"name":"x","scopes":["read"],"expires_at":"` + past + `"}`, "expires_at"},
		{root.Secret, "POST", "/v1/keys", `{"name":"x","scopes":["read"],"expires_at":"tomorrow"}`, "expires_at"},
		{root.Secret, "DELETE", "/v1/keys/key%20x", "", "key_id"},
		{root.Secret, "POST", "/v1/keys/key_abc:rotate", `{"grace_seconds":604801}`, "grace_seconds"},
		{root.Secret, "POST", "/v1/keys/key_abc:rotate", `{"grace_seconds":-1}`, "grace_seconds"},
		{root.Secret, "POST", "/v1/keys/key_abc:rotate", `{"grace_seconds":"soon"}`, "grace_seconds"},
		// Operators.
		{ops, "POST", "/v1/admin/tenants", `{"email":"a@example.com","tier":"free"}`, "name"},
		{ops, "POST", "/v1/admin/tenants", `{"name":"` + long + `","email":"a@example.com"}`, "name"},
		{ops, "POST", "/v1/admin/tenants", `{"name":"a","tier":"free"}`, "email"},
		{ops, "POST", "/v1/admin/tenants", `{"name":"a","email":"not-an-email"}`, "email"},
		{ops, "POST", "/v1/admin/tenants", `{"name":"a","email":"a@example.com","tier":"gold"}`, "tier"},
		{ops, "GET", "/v1/admin/tenants?limit=0", "", "limit"},
		{ops, "GET", "/v1/admin/tenants?limit=101", "", "limit"},
		{ops, "GET", "/v1/admin/tenants?limit=abc", "", "limit"},
		{ops, "GET", "/v1/admin/tenants?offset=-1", "", "offset"},
		{ops, "GET", "/v1/admin/tenants?tier=gold", "", "tier"},
		{ops, "GET", "/v1/admin/tenants?status=sleeping", "", "status"},
		{ops, "GET", "/v1/admin/tenants?q=" + long, "", "q"},
		{ops, "GET", "/v1/admin/tenants/not-a-uuid", "", "tenant_id"},
		{ops, "PATCH", "/v1/admin/tenants/not-a-uuid", `{"name":"x"}`, "tenant_id"},
		{ops, "PATCH", "/v1/admin/tenants/" + tn.ID, `{"name":""}`, "name"},
		{ops, "PATCH", "/v1/admin/tenants/" + tn.ID, `{"email":"nope"}`, "email"},
		{ops, "PATCH", "/v1/admin/tenants/" + tn.ID, `{"tier":"gold"}`, "tier"},
		{ops, "PATCH", "/v1/admin/tenants/" + tn.ID, `{"status":"sleeping"}`, "status"},
		{ops, "PATCH", "/v1/admin/tenants/" + tn.ID, `{"limits":{"requests_per_minute":-1}}`, "limits.requests_per_minute"},
		{ops, "PATCH", "/v1/admin/tenants/" + tn.ID, `{"limits":{"requests_per_day":"many"}}`, "requests_per_day"},
		{ops, "GET", "/v1/admin/tenants/not-a-uuid/keys", "", "tenant_id"},
		{ops, "POST", "/v1/admin/tenants/not-a-uuid/keys", `{"name":"x","scopes":["read"]}`, "tenant_id"},
		{ops, "POST", "/v1/admin/tenants/" + tn.ID + "/keys", `{"scopes":["read"]}`, "name"},
		{ops, "POST", "/v1/admin/tenants/" + tn.ID + "/keys", `{"name":"x","scopes":[]}`, "scopes"},
		{ops, "POST", "/v1/admin/tenants/" + tn.ID + "/keys", `{"name":"x","scopes":["read"],"archetypes":["wizard"]}`, "archetypes"},
		{ops, "POST", "/v1/admin/tenants/" + tn.ID + "/keys", `{"name":"x","scopes":["read"],"expires_at":"` + past + `"}`, "expires_at"},
		{ops, "GET", "/v1/admin/tenants/not-a-uuid/usage", "", "tenant_id"},
		{ops, "POST", "/v1/admin/invites", `{"tier":"gold"}`, "tier"},
		{ops, "POST", "/v1/admin/invites", `{"expires_in":10}`, "expires_in"},
		{ops, "POST", "/v1/admin/invites", `{"expires_in":99999999}`, "expires_in"},
		{ops, "GET", "/v1/admin/audit?tenant_id=nope", "", "tenant_id"},
		{ops, "GET", "/v1/admin/audit?limit=101", "", "limit"},
		{ops, "GET", "/v1/admin/audit?before=yesterday", "", "before"},
		// Sign-up.
		{"", "POST", "/v1/signup", `{"name":"x"}`, "email"},
		{"", "POST", "/v1/signup", `{"name":"x","email":"nope"}`, "email"},
		{"", "POST", "/v1/signup", `{"email":"s@example.com"}`, "name"},
		{"", "POST", "/v1/signup", `{"email":"s@example.com","name":""}`, "name"},
		{"", "POST", "/v1/signup", `{"email":"s@example.com","name":"x","invite_code":"` + strings.Repeat("c", 65) + `"}`, "invite_code"},
	}
	for _, c := range cases {
		resp, b := in.Do(t, c.method, c.path, c.key, c.body)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s %s %s: %d, want 400: %s", c.method, c.path, c.body, resp.StatusCode, b)
			continue
		}
		var e errBody
		if err := json.Unmarshal(b, &e); err != nil || !strings.Contains(e.Detail, c.field) {
			t.Errorf("%s %s %s: detail %q does not name %s", c.method, c.path, c.body, e.Detail, c.field)
		}
	}
	// Nothing was written by any of them.
	resp, b := in.Do(t, "GET", "/v1/admin/audit?tenant_id="+tn.ID, ops, "")
	mustStatus(t, resp, b, http.StatusOK)
	if n := strings.Count(string(b), `"action"`); n != 2 { // tenant.create, key.create
		t.Errorf("audit after bad input: %s", b)
	}
}

func TestControlPlaneSignup(t *testing.T) {
	t.Parallel()
	in := startControlPlane(t, map[string]string{"KGENTS_SIGNUP": "open", "SIGNUP_RATE": "3"})

	resp, b := in.Do(t, "POST", "/v1/signup", "", `{"email":"new@example.com","name":"Newco"}`)
	mustStatus(t, resp, b, http.StatusOK)
	su := decode[struct {
		Tenant apiTenant `json:"tenant"`
		Key    apiKey    `json:"key"`
		Secret string    `json:"secret"`
	}](t, b)
	if su.Tenant.Tier != "free" || su.Tenant.Status != "active" || su.Tenant.Email != "new@example.com" ||
		su.Key.TenantID != su.Tenant.ID || strings.Join(su.Key.Scopes, ",") != "read,write,admin" || !strings.HasPrefix(su.Secret, "kg_live_") {
		t.Fatalf("sign-up %s", b)
	}
	// The key works at once, and its secret is never shown again.
	resp, b = in.Do(t, "GET", "/v1/keys", su.Secret, "")
	mustStatus(t, resp, b, http.StatusOK)
	if strings.Contains(string(b), su.Secret) {
		t.Errorf("GET /v1/keys shows the secret: %s", b)
	}
	resp, b = in.Do(t, "GET", "/v1/tenant", su.Secret, "")
	mustStatus(t, resp, b, http.StatusOK)
	if strings.Contains(string(b), su.Secret) {
		t.Errorf("GET /v1/tenant shows the secret: %s", b)
	}
	// A key needs no sign-up; a key sent along is ignored.
	// One tenant per email, case-insensitively.
	resp, b = in.Do(t, "POST", "/v1/signup", bob, `{"email":"NEW@example.com","name":"Again"}`)
	mustStatus(t, resp, b, http.StatusConflict)
	// The address limit (3 an hour here; the refusals above spent some).
	var last *http.Response
	for i := range 5 {
		last, b = in.Do(t, "POST", "/v1/signup", "", fmt.Sprintf(`{"email":"n%d@example.com","name":"N"}`, i))
		if last.StatusCode == http.StatusTooManyRequests {
			break
		}
	}
	mustStatus(t, last, b, http.StatusTooManyRequests)
	if last.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// It is audited and appears among the tenants.
	resp, b = in.Do(t, "GET", "/v1/admin/audit?tenant_id="+su.Tenant.ID, ops, "")
	mustStatus(t, resp, b, http.StatusOK)
	if !strings.Contains(string(b), `"signup"`) || strings.Contains(string(b), su.Secret) {
		t.Errorf("audit of the sign-up: %s", b)
	}
}

func TestControlPlaneSignupModes(t *testing.T) {
	t.Parallel()
	off := startControlPlane(t, map[string]string{"KGENTS_SIGNUP": "off", "NATS_ENABLED": "false"})
	resp, b := off.Do(t, "POST", "/v1/signup", "", `{"email":"x@example.com","name":"X"}`)
	mustStatus(t, resp, b, http.StatusNotFound)

	inv := startControlPlane(t, map[string]string{"KGENTS_SIGNUP": "invite", "NATS_ENABLED": "false"})
	resp, b = inv.Do(t, "POST", "/v1/signup", "", `{"email":"x@example.com","name":"X"}`)
	mustStatus(t, resp, b, http.StatusBadRequest)
	if e := decode[errBody](t, b); !strings.Contains(e.Detail, "invite_code") {
		t.Errorf("sign-up without a code: %s", b)
	}
	resp, b = inv.Do(t, "POST", "/v1/admin/invites", ops, `{"tier":"pro"}`)
	mustStatus(t, resp, b, http.StatusOK)
	code := decode[struct {
		Code string `json:"code"`
	}](t, b).Code
	resp, b = inv.Do(t, "POST", "/v1/signup", "", `{"email":"x@example.com","name":"X","invite_code":"`+code+`"}`)
	mustStatus(t, resp, b, http.StatusOK)
	if got := decode[struct {
		Tenant apiTenant `json:"tenant"`
	}](t, b).Tenant; got.Tier != "pro" {
		t.Errorf("invited tenant's tier %q, want pro", got.Tier)
	}
	// Single use.
	resp, b = inv.Do(t, "POST", "/v1/signup", "", `{"email":"y@example.com","name":"Y","invite_code":"`+code+`"}`)
	mustStatus(t, resp, b, http.StatusBadRequest)
}

// A sign-up needs no key and is billed as the tenant it makes: its
// api.request has the new tenant as subject. A refused one has no tenant and
// is not billed.
func TestControlPlaneSignupIsMeteredAsTheNewTenant(t *testing.T) {
	t.Parallel()
	om := startOpenMeter(t)
	in := startControlPlane(t, map[string]string{
		"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": om.url, "OPENMETER_API_KEY": "om_test_key",
		"OPENMETER_FLUSH_INTERVAL": "0.05", "OPENMETER_BATCH_SIZE": "20",
	})
	resp, b := in.Do(t, "POST", "/v1/signup", "", `{"email":"metered@example.com","name":"Metered"}`)
	mustStatus(t, resp, b, http.StatusOK)
	tenantID := decode[struct {
		Tenant apiTenant `json:"tenant"`
	}](t, b).Tenant.ID
	resp, b = in.Do(t, "POST", "/v1/signup", "", `{"email":"metered@example.com","name":"Again"}`)
	mustStatus(t, resp, b, http.StatusConflict)

	signups := func() []map[string]any {
		var out []map[string]any
		for _, ev := range om.byType("api.request") {
			if dataOf(ev)["endpoint"] == "/v1/signup" {
				out = append(out, ev)
			}
		}
		return out
	}
	om.waitFor(t, "the sign-up's api.request", func() bool { return len(signups()) >= 1 })
	time.Sleep(300 * time.Millisecond) // room for a wrongly billed refusal to arrive
	got := signups()
	if len(got) != 1 || got[0]["subject"] != tenantID || dataOf(got[0])["status_code"].(float64) != 200 || dataOf(got[0])["method"] != "POST" {
		t.Errorf("sign-up api.request events %v, want one for tenant %s", got, tenantID)
	}
}
