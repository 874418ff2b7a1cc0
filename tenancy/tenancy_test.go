package tenancy_test

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/tenancy"
)

func TestDevKeys(t *testing.T) {
	t.Parallel()
	k, err := tenancy.NewKeyring(tenancy.KeyringOptions{DevKeys: true})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		key    string
		tenant string
		tier   tenancy.Tier
		scopes string
		user   string
	}{
		{"kg_dev_alice", tenancy.DevTenantFree, tenancy.TierFree, "read", "user_alice"},
		{"kg_dev_bob", tenancy.DevTenantPro, tenancy.TierPro, "read,write", "user_bob"},
		{"kg_dev_carol", tenancy.DevTenantEnterprise, tenancy.TierEnterprise, "read,write,admin", "user_carol"},
		{"kg_dev_ops", tenancy.DevTenantOps, tenancy.TierEnterprise, "read,write,admin,operator", "user_ops"},
	}
	for _, tc := range cases {
		id, err := k.Authenticate(tc.key)
		if err != nil {
			t.Fatalf("%s: %v", tc.key, err)
		}
		if id.TenantID != tc.tenant || id.Tier != tc.tier || id.Scopes.String() != tc.scopes || id.UserID != tc.user {
			t.Errorf("%s = %+v", tc.key, id)
		}
		h := tenancy.HashKey(tc.key)
		if strings.Contains(id.KeyID, tc.key) || len(id.KeyID) != 12 || strings.Contains(hex.EncodeToString(h[:]), id.KeyID[:8]) {
			t.Errorf("KeyID %q must be a non-secret id, not a piece of the key's hash", id.KeyID)
		}
	}
	off, err := tenancy.NewKeyring(tenancy.KeyringOptions{DevKeys: false})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := off.Authenticate("kg_dev_bob"); !errors.Is(err, tenancy.ErrKeyUnknown) {
		t.Errorf("dev keys off: %v", err)
	}
}

func TestKeyFormat(t *testing.T) {
	t.Parallel()
	k, _ := tenancy.NewKeyring(tenancy.KeyringOptions{DevKeys: true})
	for key, want := range map[string]error{
		"":                               tenancy.ErrKeyMissing,
		"invalid_key":                    tenancy.ErrKeyFormat,
		"api_key_123":                    tenancy.ErrKeyFormat,
		"kg":                             tenancy.ErrKeyFormat,
		"kg_test":                        tenancy.ErrKeyUnknown, // well formed, not issued
		"kg_prod_12345":                  tenancy.ErrKeyUnknown,
		"kg_" + strings.Repeat("x", 300): tenancy.ErrKeyFormat,
	} {
		if _, err := k.Authenticate(key); !errors.Is(err, want) {
			t.Errorf("Authenticate(%.20q) = %v, want %v", key, err, want)
		}
	}
}

func TestTierPolicy(t *testing.T) {
	t.Parallel()
	tiers := tenancy.DefaultTiers()
	B := func(s string) soulv1.Budget { return soulv1.Budget(soulv1.Budget_value["BUDGET_"+strings.ToUpper(s)]) }
	matrix := map[tenancy.Tier]map[string]bool{
		tenancy.TierFree:       {"dormant": true, "whisper": true, "dialogue": false, "deep": false},
		tenancy.TierPro:        {"dormant": true, "whisper": true, "dialogue": true, "deep": false},
		tenancy.TierEnterprise: {"dormant": true, "whisper": true, "dialogue": true, "deep": true},
	}
	for tier, budgets := range matrix {
		for b, want := range budgets {
			if got := tiers[tier].AllowsBudget(B(b)); got != want {
				t.Errorf("%s allows %s = %v, want %v", tier, b, got, want)
			}
		}
	}
	defaults := map[tenancy.Tier]string{tenancy.TierFree: "whisper", tenancy.TierPro: "dialogue", tenancy.TierEnterprise: "deep"}
	for tier, want := range defaults {
		if got := tiers[tier].DefaultBudget; got != B(want) {
			t.Errorf("%s default budget %v, want %s", tier, got, want)
		}
	}
	if l := tiers[tenancy.TierFree]; l.RequestsPerMinute != 60 || l.RequestsPerDay != 100 || l.TokensPerMonth != 10_000 {
		t.Errorf("free limits %+v", l)
	}
	if l := tiers[tenancy.TierEnterprise]; l.TokensPerMonth != 0 || l.RequestsPerMinute != 6000 {
		t.Errorf("enterprise limits %+v", l)
	}
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func hashHex(key string) string {
	h := tenancy.HashKey(key)
	return hex.EncodeToString(h[:])
}

func TestTiersFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := writeFile(t, dir, "tiers.json", `{"free": {"requests_per_minute": 5, "budgets": ["dormant"]}, "PRO": {"tokens_per_month": 0}}`)
	tiers, err := tenancy.LoadTiers(p)
	if err != nil {
		t.Fatal(err)
	}
	free := tiers[tenancy.TierFree]
	if free.RequestsPerMinute != 5 || free.RequestsPerDay != 100 || len(free.Budgets) != 1 || free.DefaultBudget != soulv1.Budget_BUDGET_DORMANT {
		t.Errorf("free = %+v (fields left out keep defaults; the default budget must be allowed)", free)
	}
	if tiers[tenancy.TierPro].TokensPerMonth != 0 || tiers[tenancy.TierPro].RequestsPerDay != 1000 {
		t.Errorf("pro = %+v", tiers[tenancy.TierPro])
	}
	for body, want := range map[string]string{
		`{"gold": {}}`:                         "unknown tier",
		`{"free": {"requests_per_minit": 5}}`:  "unknown field",
		`{"free": {"requests_per_day": -1}}`:   "must not be negative",
		`{"free": {"budgets": ["unlimited"]}}`: "unknown budget",
		`{"free": {"budgets": []}}`:            "allows no budget",
		`not json`:                             "KGENTS_TIERS_FILE",
	} {
		if _, err := tenancy.LoadTiers(writeFile(t, dir, "bad.json", body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadTiers(%s) = %v, want an error containing %q", body, err, want)
		}
	}
}

const tenantA = "6a0c5e58-3c1e-4f0e-9e7e-2b2a3f1d8c11"

func TestKeyFileAndReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := `{"tenants":[{"id":"` + tenantA + `","name":"Acme","tier":"pro"}],
	  "keys":[{"sha256":"` + hashHex("kg_acme_one") + `","tenant_id":"` + tenantA + `","user_id":"u1","scopes":["read","write"],
	           "archetypes":["Developer","architect"],"limits":{"requests_per_minute":30}},
	          {"sha256":"` + hashHex("kg_acme_old") + `","tenant_id":"` + tenantA + `","user_id":"u2","scopes":["read"],"expires_at":"2020-01-01T00:00:00Z"}]}`
	p := writeFile(t, dir, "keys.json", good)
	k, err := tenancy.NewKeyring(tenancy.KeyringOptions{KeysFile: p})
	if err != nil {
		t.Fatal(err)
	}
	id, err := k.Authenticate("kg_acme_one")
	if err != nil {
		t.Fatal(err)
	}
	if id.TenantID != tenantA || id.Tier != tenancy.TierPro || !id.Scopes.Has(tenancy.ScopeWrite) || !id.AllowsArchetype("developer") || !id.AllowsArchetype("architect") {
		t.Errorf("identity = %+v", id)
	}
	if id.Limits.RequestsPerMinute != 30 || id.Limits.RequestsPerDay != 1000 {
		t.Errorf("key limits narrow the tenant's: %+v", id.Limits)
	}
	if _, err := k.Authenticate("kg_acme_old"); !errors.Is(err, tenancy.ErrKeyExpired) {
		t.Errorf("expired key: %v", err)
	}

	// A broken file is refused and the keys in force stay.
	if err := os.WriteFile(p, []byte(`{"tenants":[],"keys":[{"sha256":"zz"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := k.Reload(); err == nil || !strings.Contains(err.Error(), "keys[0].sha256") {
		t.Errorf("reload of a bad file: %v", err)
	}
	if _, err := k.Authenticate("kg_acme_one"); err != nil {
		t.Errorf("a failed reload dropped the keys in force: %v", err)
	}
	// A good change takes effect through Watch without a restart.
	revoked := strings.Replace(good, hashHex("kg_acme_one"), hashHex("kg_acme_two"), 1)
	if err := os.WriteFile(p, []byte(revoked), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go k.Watch(ctx, 20*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, errOld := k.Authenticate("kg_acme_one")
		_, errNew := k.Authenticate("kg_acme_two")
		if errors.Is(errOld, tenancy.ErrKeyUnknown) && errNew == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key file change not picked up: old %v new %v", errOld, errNew)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestKeyFileValidation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for body, want := range map[string]string{
		`{"tenants":[{"id":"x","tier":"pro"}]}`:                              "is not a UUID",
		`{"tenants":[{"id":"` + tenantA + `","tier":"gold"}]}`:               "unknown tier",
		`{"keys":[{"sha256":"` + hashHex("kg_x") + `","tenant_id":"nope"}]}`: "is not a tenant of this file",
		`{"tenants":[{"id":"` + tenantA + `","tier":"pro"}],"keys":[{"sha256":"` + hashHex("kg_x") + `","tenant_id":"` + tenantA + `","user_id":"u","scopes":["root"]}]}`: "unknown scope",
		`{"unexpected": 1}`: "unknown field",
	} {
		_, err := tenancy.NewKeyring(tenancy.KeyringOptions{KeysFile: writeFile(t, dir, "k.json", body)})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("key file %s: %v, want an error containing %q", body, err, want)
		}
	}
	if _, err := tenancy.NewKeyring(tenancy.KeyringOptions{KeysFile: filepath.Join(dir, "missing.json")}); err == nil {
		t.Error("a missing key file must fail start-up")
	}
}

func TestKeyFileEntry(t *testing.T) {
	t.Parallel()
	entry, err := tenancy.KeyFileEntry("kg_new_key", tenantA, "u9", []string{"read"})
	if err != nil || !strings.Contains(entry, hashHex("kg_new_key")) || strings.Contains(entry, "kg_new_key") {
		t.Errorf("entry = %s, %v (must carry the hash, never the key)", entry, err)
	}
	if _, err := tenancy.KeyFileEntry("nokey", tenantA, "u", nil); err == nil {
		t.Error("a key without kg_ must be refused")
	}
}
