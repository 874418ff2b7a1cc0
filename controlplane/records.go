package controlplane

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kgents/kgents-go/tenancy"
)

// Stored forms (JSON, readable with `nats kv get`). Layout version 1.

type limitsRecord struct {
	RequestsPerMinute *int64 `json:"requests_per_minute,omitempty"`
	RequestsPerDay    *int64 `json:"requests_per_day,omitempty"`
	TokensPerMonth    *int64 `json:"tokens_per_month,omitempty"`
}

type tenantRecord struct {
	V                    int          `json:"v"`
	ID                   string       `json:"id"`
	Name                 string       `json:"name"`
	Email                string       `json:"email"`
	Tier                 tenancy.Tier `json:"tier"`
	Status               Status       `json:"status"`
	Limits               limitsRecord `json:"limits"`
	StripeCustomerID     string       `json:"stripe_customer_id,omitempty"`
	StripeSubscriptionID string       `json:"stripe_subscription_id,omitempty"`
	GraceUntil           *time.Time   `json:"grace_until,omitempty"`
	CreatedAt            time.Time    `json:"created_at"`
	UpdatedAt            time.Time    `json:"updated_at"`
	// AuditID is the audit entry of the change that made this state
	// (appended before the state was written).
	AuditID string `json:"audit_id,omitempty"`
}

type keyRecord struct {
	V          int        `json:"v"`
	ID         string     `json:"id"`
	TenantID   string     `json:"tenant_id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	SHA256     string     `json:"sha256"` // hex of the secret's SHA-256; the secret is never stored
	Scopes     []string   `json:"scopes"`
	Archetypes []string   `json:"archetypes"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	RotatedTo  string     `json:"rotated_to,omitempty"`
	AuditID    string     `json:"audit_id,omitempty"` // as tenantRecord's (last_used_at marks keep it)
}

type inviteRecord struct {
	Code      string       `json:"code"`
	Tier      tenancy.Tier `json:"tier"`
	ExpiresAt time.Time    `json:"expires_at"`
	CreatedBy string       `json:"created_by"`
	UsedAt    *time.Time   `json:"used_at,omitempty"`
	UsedBy    string       `json:"used_by,omitempty"`
	AuditID   string       `json:"audit_id,omitempty"` // as tenantRecord's
}

func (r *tenantRecord) tenant() *Tenant {
	return &Tenant{
		ID: r.ID, Name: r.Name, Email: r.Email, Tier: r.Tier, Status: r.Status,
		Limits:           Limits{r.Limits.RequestsPerMinute, r.Limits.RequestsPerDay, r.Limits.TokensPerMonth},
		StripeCustomerID: r.StripeCustomerID, StripeSubscriptionID: r.StripeSubscriptionID,
		GraceUntil: r.GraceUntil, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
	}
}

func (r *keyRecord) scopes() tenancy.Scope {
	s, _ := tenancy.ParseScopes(r.Scopes)
	return s
}

func (r *keyRecord) key() *Key {
	return &Key{
		ID: r.ID, TenantID: r.TenantID, Name: r.Name, Prefix: r.Prefix, Scopes: r.scopes(),
		Archetypes: slices.Clone(r.Archetypes), ExpiresAt: r.ExpiresAt, LastUsedAt: r.LastUsedAt,
		RevokedAt: r.RevokedAt, CreatedAt: r.CreatedAt,
	}
}

func (r *keyRecord) hash() ([32]byte, bool) {
	var h [32]byte
	b, err := hex.DecodeString(r.SHA256)
	if err != nil || len(b) != 32 {
		return h, false
	}
	copy(h[:], b)
	return h, true
}

func decode[T any](b []byte) (*T, error) {
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("stored record is corrupt: %w", err)
	}
	return v, nil
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain types
	}
	return b
}

// limitsFor is a tenant's limits: its tier's, with its overrides.
func limitsFor(tiers tenancy.Tiers, tier tenancy.Tier, l limitsRecord) tenancy.Limits {
	out := tiers[tier]
	out.Budgets = slices.Clone(out.Budgets)
	if l.RequestsPerMinute != nil {
		out.RequestsPerMinute = *l.RequestsPerMinute
	}
	if l.RequestsPerDay != nil {
		out.RequestsPerDay = *l.RequestsPerDay
	}
	if l.TokensPerMonth != nil {
		out.TokensPerMonth = *l.TokensPerMonth
	}
	return out
}

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// randomBase62 returns n characters from crypto/rand, uniformly (bytes
// ≥ 248 are rejected so every character is equally likely).
func randomBase62(n int) string {
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/2+8)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			panic(err) // crypto/rand does not fail on supported platforms
		}
		for _, b := range buf {
			if b < 248 && len(out) < n {
				out = append(out, base62[b%62])
			}
		}
	}
	return string(out)
}

// SecretPrefix starts every control-plane key.
const SecretPrefix = "kg_live_"

// newSecret mints a key secret: kg_live_ + 32 base62 characters.
func newSecret() string { return SecretPrefix + randomBase62(32) }

func newKeyID() string { return "key_" + randomBase62(20) }

// emailKey is the email index's key for an address: the SHA-256 of its
// lowercased form (KV keys cannot hold '@').
func emailKey(email string) string {
	h := sha256.Sum256([]byte(strings.ToLower(strings.TrimSpace(email))))
	return hex.EncodeToString(h[:])
}

func ptr[T any](v T) *T { return &v }
