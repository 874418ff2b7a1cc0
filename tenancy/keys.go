package tenancy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Scope is a set of permissions a key carries.
type Scope uint8

// The scopes.
const (
	ScopeRead Scope = 1 << iota
	ScopeWrite
	ScopeAdmin
	// ScopeOperator is every tenant's control plane (SPEC §4.13).
	ScopeOperator
)

// Has reports whether s includes all of want.
func (s Scope) Has(want Scope) bool { return s&want == want }

func (s Scope) String() string {
	var parts []string
	for _, p := range []struct {
		bit  Scope
		name string
	}{{ScopeRead, "read"}, {ScopeWrite, "write"}, {ScopeAdmin, "admin"}, {ScopeOperator, "operator"}} {
		if s.Has(p.bit) {
			parts = append(parts, p.name)
		}
	}
	return strings.Join(parts, ",")
}

// ParseScope reads one scope name.
func ParseScope(s string) (Scope, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "read":
		return ScopeRead, nil
	case "write":
		return ScopeWrite, nil
	case "admin":
		return ScopeAdmin, nil
	case "operator":
		return ScopeOperator, nil
	}
	return 0, fmt.Errorf("unknown scope %q (read, write, admin, operator)", s)
}

// Names lists the scope names of s, in table order ("read", "write", ...).
func (s Scope) Names() []string {
	if s == 0 {
		return []string{}
	}
	return strings.Split(s.String(), ",")
}

// ParseScopes reads a list of scope names into a set.
func ParseScopes(names []string) (Scope, error) {
	var out Scope
	for _, n := range names {
		sc, err := ParseScope(n)
		if err != nil {
			return 0, err
		}
		out |= sc
	}
	return out, nil
}

// TenantStatus is a tenant's standing (SPEC §4.13).
type TenantStatus string

// The tenant statuses.
const (
	StatusActive    TenantStatus = "active"
	StatusPastDue   TenantStatus = "past_due"
	StatusSuspended TenantStatus = "suspended"
	StatusCanceled  TenantStatus = "canceled"
)

// ParseTenantStatus reads a status name case-insensitively.
func ParseTenantStatus(s string) (TenantStatus, error) {
	switch st := TenantStatus(strings.ToLower(strings.TrimSpace(s))); st {
	case StatusActive, StatusPastDue, StatusSuspended, StatusCanceled:
		return st, nil
	}
	return "", fmt.Errorf("unknown status %q (active, past_due, suspended, canceled)", s)
}

// KeyLimits narrow a tenant's limits for one key; zero leaves a limit as is.
type KeyLimits struct {
	RequestsPerMinute int64 `json:"requests_per_minute,omitempty"`
	RequestsPerDay    int64 `json:"requests_per_day,omitempty"`
	TokensPerMonth    int64 `json:"tokens_per_month,omitempty"`
}

// Tenant is a customer. Its tier decides its limits.
type Tenant struct {
	ID   string
	Name string
	Tier Tier
}

// Key is a stored API key. Only the SHA-256 of the secret is kept.
type Key struct {
	Hash       [32]byte
	TenantID   string
	UserID     string
	Scopes     Scope
	Archetypes []string
	ExpiresAt  time.Time // zero: never
	Limits     KeyLimits
}

// ID is a short, non-secret key identifier for logs, the API ("file_…")
// and audit actors: 12 hex digits of SHA-256(keyIDDomain ‖ Hash). It is not
// a prefix of the stored hash (the key file's sha256): the domain-separated
// second hash makes it a value of its own, so logs and responses carry no
// piece of any stored hash, and an id says nothing about the secret beyond
// what checking a guessed secret against it would (as with any public id
// derived from a key; the secrets are 190 random bits).
func (k *Key) ID() string { return PublicKeyID(k.Hash) }

// keyIDDomain separates the public key id from every other use of a key's hash.
const keyIDDomain = "kgents public key id v1\x00"

// PublicKeyID is the public id of the key whose SHA-256 is hash (Key.ID).
func PublicKeyID(hash [32]byte) string {
	var buf [len(keyIDDomain) + 32]byte
	n := copy(buf[:], keyIDDomain)
	copy(buf[n:], hash[:])
	id := sha256.Sum256(buf[:])
	return hex.EncodeToString(id[:6])
}

// HashKey returns the SHA-256 of a raw API key.
func HashKey(raw string) [32]byte {
	// Copied into a stack buffer: []byte(raw) of a key longer than 32
	// bytes (every kg_live_ key) would be a heap allocation per request.
	var buf [128]byte
	if len(raw) <= len(buf) {
		n := copy(buf[:], raw)
		return sha256.Sum256(buf[:n])
	}
	return sha256.Sum256([]byte(raw))
}

// KeyPrefix is what every kgents API key starts with.
const KeyPrefix = "kg_"

// DefaultArchetypes are the AGENTESE archetypes a key gets unless told otherwise.
var DefaultArchetypes = []string{"developer"}

// Development tenants and keys (KGENTS_DEV_KEYS=true). The tenant ids are
// those of SPEC §4.2: alice is FREE in tenant …0002, bob PRO in …0001, carol
// ENTERPRISE in …0003.
const (
	DevTenantPro        = "00000000-0000-0000-0000-000000000001"
	DevTenantFree       = "00000000-0000-0000-0000-000000000002"
	DevTenantEnterprise = "00000000-0000-0000-0000-000000000003"
	// DevTenantOps holds kg_dev_ops, the operator key (SPEC §4.13).
	DevTenantOps = "00000000-0000-0000-0000-000000000004"
)

func devEntries() ([]*Tenant, []*Key) {
	tenants := []*Tenant{
		{ID: DevTenantPro, Name: "Development (pro)", Tier: TierPro},
		{ID: DevTenantFree, Name: "Development (free)", Tier: TierFree},
		{ID: DevTenantEnterprise, Name: "Development (enterprise)", Tier: TierEnterprise},
		{ID: DevTenantOps, Name: "Development (operators)", Tier: TierEnterprise},
	}
	allArchetypes := []string{"developer", "architect", "poet", "economist", "inhabitant", "scientist", "admin",
		"philosopher", "engineer", "artist", "teacher"}
	keys := []*Key{
		{Hash: HashKey("kg_dev_alice"), TenantID: DevTenantFree, UserID: "user_alice", Scopes: ScopeRead, Archetypes: DefaultArchetypes},
		{Hash: HashKey("kg_dev_bob"), TenantID: DevTenantPro, UserID: "user_bob", Scopes: ScopeRead | ScopeWrite, Archetypes: []string{"developer", "architect"}},
		{Hash: HashKey("kg_dev_carol"), TenantID: DevTenantEnterprise, UserID: "user_carol", Scopes: ScopeRead | ScopeWrite | ScopeAdmin, Archetypes: allArchetypes},
		{Hash: HashKey("kg_dev_ops"), TenantID: DevTenantOps, UserID: "user_ops", Scopes: ScopeRead | ScopeWrite | ScopeAdmin | ScopeOperator, Archetypes: allArchetypes},
	}
	return tenants, keys
}

// keyFile is the JSON format of KGENTS_API_KEYS_FILE (docs/configuration.md).
type keyFile struct {
	Tenants []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
		Tier string `json:"tier"`
	} `json:"tenants"`
	Keys []struct {
		SHA256     string    `json:"sha256"`
		TenantID   string    `json:"tenant_id"`
		UserID     string    `json:"user_id"`
		Scopes     []string  `json:"scopes"`
		Archetypes []string  `json:"archetypes"`
		ExpiresAt  string    `json:"expires_at"`
		Limits     KeyLimits `json:"limits"`
	} `json:"keys"`
}

// parseKeyFile reads and checks a key file. Every problem is reported with
// its entry's position; nothing of a bad file is used.
func parseKeyFile(data []byte) ([]*Tenant, []*Key, error) {
	var f keyFile
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, nil, fmt.Errorf("not a valid key file: %w", err)
	}
	var errs []error
	tenants := make([]*Tenant, 0, len(f.Tenants))
	known := map[string]bool{}
	for i, t := range f.Tenants {
		if _, err := uuid.Parse(t.ID); err != nil {
			errs = append(errs, fmt.Errorf("tenants[%d].id %q is not a UUID", i, t.ID))
			continue
		}
		tier, err := ParseTier(t.Tier)
		if err != nil {
			errs = append(errs, fmt.Errorf("tenants[%d].tier: %w", i, err))
			continue
		}
		if known[t.ID] {
			errs = append(errs, fmt.Errorf("tenants[%d].id %s appears twice", i, t.ID))
			continue
		}
		known[t.ID] = true
		tenants = append(tenants, &Tenant{ID: t.ID, Name: t.Name, Tier: tier})
	}
	keys := make([]*Key, 0, len(f.Keys))
	seen := map[[32]byte]bool{}
	for i, k := range f.Keys {
		raw, err := hex.DecodeString(k.SHA256)
		if err != nil || len(raw) != 32 {
			errs = append(errs, fmt.Errorf("keys[%d].sha256 is not 64 hex digits", i))
			continue
		}
		key := &Key{TenantID: k.TenantID, UserID: k.UserID, Limits: k.Limits}
		copy(key.Hash[:], raw)
		if seen[key.Hash] {
			errs = append(errs, fmt.Errorf("keys[%d] repeats a key", i))
			continue
		}
		seen[key.Hash] = true
		if !known[k.TenantID] {
			errs = append(errs, fmt.Errorf("keys[%d].tenant_id %q is not a tenant of this file", i, k.TenantID))
		}
		if k.UserID == "" {
			errs = append(errs, fmt.Errorf("keys[%d].user_id is empty", i))
		}
		if len(k.Scopes) == 0 {
			errs = append(errs, fmt.Errorf("keys[%d].scopes is empty", i))
		}
		for _, s := range k.Scopes {
			sc, err := ParseScope(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("keys[%d].scopes: %w", i, err))
			}
			key.Scopes |= sc
		}
		key.Archetypes = DefaultArchetypes
		if len(k.Archetypes) > 0 {
			key.Archetypes = slices.Clone(k.Archetypes)
			for j, a := range key.Archetypes {
				key.Archetypes[j] = strings.ToLower(strings.TrimSpace(a))
			}
		}
		if k.ExpiresAt != "" {
			t, err := time.Parse(time.RFC3339, k.ExpiresAt)
			if err != nil {
				errs = append(errs, fmt.Errorf("keys[%d].expires_at %q is not RFC 3339", i, k.ExpiresAt))
			}
			key.ExpiresAt = t
		}
		if k.Limits.RequestsPerMinute < 0 || k.Limits.RequestsPerDay < 0 || k.Limits.TokensPerMonth < 0 {
			errs = append(errs, fmt.Errorf("keys[%d].limits must not be negative", i))
		}
		keys = append(keys, key)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	return tenants, keys, nil
}

// KeyFileEntry renders the key-file entry for a raw key, for the keygen tool
// and the docs.
func KeyFileEntry(raw, tenantID, userID string, scopes []string) (string, error) {
	if !strings.HasPrefix(raw, KeyPrefix) {
		return "", fmt.Errorf("a key must start with %q", KeyPrefix)
	}
	h := HashKey(raw)
	b, err := json.MarshalIndent(map[string]any{
		"sha256":    hex.EncodeToString(h[:]),
		"tenant_id": tenantID,
		"user_id":   userID,
		"scopes":    scopes,
	}, "", "  ")
	return string(b), err
}
