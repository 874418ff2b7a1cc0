// Package controlplane holds tenants and API keys as managed data (SPEC
// §4.13): stores in JetStream KV (kgent-tenants, kgent-keys, an email index
// and invites) with in-memory twins, an in-memory cache on every replica kept
// current by a KV watch and used for authentication (no NATS round trip per
// request), key minting, sign-up, and the audit log (stream kgent-audit).
//
// The gRPC services call a Manager. They enforce scopes through the policy
// table (server/methods.go); the Manager enforces what depends on the data:
// tenant ownership (a non-operator reaches its own tenant only, another's is
// ErrNotFound), no escalation (ErrForbidden), read-only sources
// (ErrReadOnly).
//
// Error mapping for the API layer:
//
//	ErrNotFound      → NOT_FOUND 404
//	ErrExists        → ALREADY_EXISTS 409 (email taken)
//	ErrInvalid       → INVALID_ARGUMENT 400; the wrapped text names the field ("email: …"), safe to show
//	ErrForbidden     → PERMISSION_DENIED 403 (escalation, or a non-operator reaching operator data)
//	ErrReadOnly      → FAILED_PRECONDITION 409 (a key-file or dev tenant or key; the text says so)
//	ErrUnavailable   → UNAVAILABLE 503 with Retry-After (NATS away; writes only, reads serve the cache)
//	ErrSignupOff     → NOT_FOUND 404 (KGENTS_SIGNUP=off)
//	*RateLimitedError → RESOURCE_EXHAUSTED 429 with Retry-After = RetryAfter rounded up to seconds
//
// The texts of these errors are written for the caller and never contain a
// secret, a hash or internal detail; any other error is internal (500).
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/kgents/kgents-go/tenancy"
)

// Status is a tenant's standing: "active" | "past_due" | "suspended" | "canceled".
type Status = tenancy.TenantStatus

// The statuses.
const (
	StatusActive    = tenancy.StatusActive
	StatusPastDue   = tenancy.StatusPastDue
	StatusSuspended = tenancy.StatusSuspended
	StatusCanceled  = tenancy.StatusCanceled
)

// ParseStatus reads a status name case-insensitively.
func ParseStatus(s string) (Status, error) { return tenancy.ParseTenantStatus(s) }

// Limits override a tenant's tier limits: nil keeps the tier's default,
// 0 means unlimited; negative is ErrInvalid.
type Limits struct {
	RequestsPerMinute, RequestsPerDay, TokensPerMonth *int64
}

// Tenant is a customer.
type Tenant struct {
	ID    string // UUID
	Name  string
	Email string // billing contact, unique case-insensitively (as given, not lowercased)
	Tier  tenancy.Tier
	// Status is never empty in a returned Tenant.
	Status Status
	Limits Limits
	// Set by the billing lifecycle (not through TenantPatch).
	StripeCustomerID, StripeSubscriptionID string
	GraceUntil                             *time.Time
	CreatedAt, UpdatedAt                   time.Time // zero for a ReadOnly tenant
	// ReadOnly: from the key file or the dev keys; cannot be changed through
	// the API (UpdateTenant, CreateKey, RevokeKey, RotateKey answer ErrReadOnly).
	ReadOnly bool
}

// Key is an API key's public record. It never holds the secret or its hash.
type Key struct {
	ID       string // "key_" + 20 random base62 characters; for a ReadOnly key "file_" + a short non-secret id
	TenantID string
	Name     string
	Prefix   string // the first 12 characters of the secret ("kg_live_AbCd"); empty for a ReadOnly key
	Scopes   tenancy.Scope
	// Archetypes are the AGENTESE archetypes the key may use (default ["developer"]).
	Archetypes                       []string
	ExpiresAt, LastUsedAt, RevokedAt *time.Time
	CreatedAt                        time.Time
	ReadOnly                         bool
}

// KeySpec is what CreateKey makes. Scopes must be non-zero; Archetypes
// empty means ["developer"]; ExpiresAt, when set, must be in the future.
type KeySpec struct {
	Name       string // 1–100 characters
	Scopes     tenancy.Scope
	Archetypes []string
	ExpiresAt  *time.Time
}

// TenantPatch changes the fields that are set. Limits replaces the whole
// override set (a nil field inside it clears that override).
type TenantPatch struct {
	Name, Email *string
	Tier        *tenancy.Tier
	Status      *Status
	Limits      *Limits
}

// TenantFilter narrows ListTenants; zero fields match everything.
type TenantFilter struct {
	Tier   *tenancy.Tier
	Status *Status
	Query  string // name or email substring, case-insensitive
}

// AuditEntry is one change. Entries are appended, never rewritten.
type AuditEntry struct {
	ID       string    `json:"id"`
	Time     time.Time `json:"time"`
	Actor    string    `json:"actor"` // key id ("key_…", or a ReadOnly key's id), "stripe" or "system"
	TenantID string    `json:"tenant_id"`
	// Action: tenant.create, tenant.update, key.create, key.revoke,
	// key.rotate, invite.create, signup, billing.…; change.aborted names
	// (detail "entry") an earlier entry whose change was not made after all.
	Action string            `json:"action"`
	Detail map[string]Change `json:"detail"`
}

// Change is one field's old and new value (JSON-friendly: strings, numbers,
// bools, string lists, nil).
type Change struct {
	Old any `json:"old"`
	New any `json:"new"`
}

// Invite is a single-use sign-up code.
type Invite struct {
	Code      string
	Tier      tenancy.Tier
	ExpiresAt time.Time
}

// Actor is who makes a change: from the caller's Identity (ActorFrom), or
// a system actor (SystemActor("stripe"), SystemActor("system")) which may
// change any tenant.
type Actor struct {
	KeyID      string
	Scopes     tenancy.Scope
	Archetypes []string
	TenantID   string
	system     bool
}

// ActorFrom is the actor of an authenticated call.
func ActorFrom(id *tenancy.Identity) Actor {
	if id == nil {
		return Actor{}
	}
	kid := id.KeyPublicID
	if kid == "" {
		kid = readOnlyKeyID(id.KeyID)
	}
	return Actor{KeyID: kid, Scopes: id.Scopes, Archetypes: id.Archetypes, TenantID: id.TenantID}
}

// SystemActor is a trusted internal actor ("stripe", "system").
func SystemActor(name string) Actor {
	return Actor{KeyID: name, Scopes: tenancy.ScopeRead | tenancy.ScopeWrite | tenancy.ScopeAdmin | tenancy.ScopeOperator, system: true}
}

// IsOperator reports whether the actor may reach every tenant.
func (a Actor) IsOperator() bool { return a.system || a.Scopes.Has(tenancy.ScopeOperator) }

// Manager is what the gRPC services call. Every change appends its audit
// entry before it is made, and a change whose audit entry cannot be
// written is not made.
// Reads (Get/List) are served from the cache and keep working while NATS
// is away; writes then answer ErrUnavailable.
type Manager interface {
	// GetTenant returns a tenant (managed or ReadOnly). No ownership check:
	// callers pass the caller's own tenant id or hold operator scope.
	GetTenant(ctx context.Context, id string) (*Tenant, error)
	// ListTenants returns one page (newest first; ReadOnly tenants last) and
	// the total matching. limit 1–100, offset ≥ 0, else ErrInvalid.
	ListTenants(ctx context.Context, f TenantFilter, offset, limit int) ([]*Tenant, int, error)
	// CreateTenant (operator) makes an active tenant. Email taken → ErrExists.
	CreateTenant(ctx context.Context, a Actor, name, email string, tier tenancy.Tier) (*Tenant, error)
	// UpdateTenant (operator) applies p. Takes effect for authentication on
	// every replica within 2 s.
	UpdateTenant(ctx context.Context, a Actor, id string, p TenantPatch) (*Tenant, error)
	// ListKeys returns a tenant's keys, revoked ones included, newest first.
	ListKeys(ctx context.Context, tenantID string) ([]*Key, error)
	// CreateKey mints a key for tenantID and returns it with its secret
	// (shown once). The actor must own tenantID or be an operator
	// (otherwise ErrNotFound), and hold every scope and archetype of s
	// (otherwise ErrForbidden).
	CreateKey(ctx context.Context, a Actor, tenantID string, s KeySpec) (*Key, string, error)
	// RevokeKey revokes at once (every replica within 2 s). Another
	// tenant's key is ErrNotFound; an already revoked key is returned as is.
	RevokeKey(ctx context.Context, a Actor, tenantID, keyID string) (*Key, error)
	// RotateKey mints a new key with the old one's settings and makes the
	// old one expire after grace (0 = DefaultGrace; max MaxGrace, negative
	// or more is ErrInvalid). Returns the new key and its secret.
	RotateKey(ctx context.Context, a Actor, tenantID, keyID string, grace time.Duration) (*Key, string, error)
	// CreateInvite (operator) makes a single-use sign-up code; tier ""
	// means free, expiresIn 0 means DefaultInviteTTL (max MaxInviteTTL).
	CreateInvite(ctx context.Context, a Actor, tier tenancy.Tier, expiresIn time.Duration) (*Invite, error)
	// Signup makes a tenant (free, or the invite's tier) and one key (read,
	// write, admin) and returns them with the key's secret. ErrSignupOff,
	// ErrInvalid (email syntax, name, invite code missing/unknown/used/
	// expired), ErrExists (email), *RateLimitedError (per clientAddr).
	Signup(ctx context.Context, email, name, inviteCode, clientAddr string) (*Tenant, *Key, string, error)
	// ListAudit returns entries newest first, older than before (zero =
	// now), of one tenant ("" = all), at most limit (1–100).
	ListAudit(ctx context.Context, tenantID string, before time.Time, limit int) ([]*AuditEntry, error)
}

// Grace and invite bounds.
const (
	DefaultGrace     = time.Hour
	MaxGrace         = 7 * 24 * time.Hour
	DefaultInviteTTL = 7 * 24 * time.Hour
	MaxInviteTTL     = 90 * 24 * time.Hour
)

// Sentinel errors; see the package doc for their mapping.
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrInvalid     = errors.New("invalid argument")
	ErrForbidden   = errors.New("permission denied")
	ErrReadOnly    = errors.New("read-only: managed in KGENTS_API_KEYS_FILE or a dev key, not through the API")
	ErrUnavailable = errors.New("control plane unavailable; retry shortly")
	ErrSignupOff   = errors.New("sign-up is not enabled")
)

// invalid wraps ErrInvalid with a message naming the field: "email: not an email address".
func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}

// RateLimitedError is a sign-up over SIGNUP_RATE for its client address.
type RateLimitedError struct{ RetryAfter time.Duration }

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("too many sign-ups from this address; retry in %d s", e.RetryAfterSeconds())
}

// RetryAfterSeconds is RetryAfter rounded up to whole seconds (at least 1).
func (e *RateLimitedError) RetryAfterSeconds() int64 {
	return max(1, int64(math.Ceil(e.RetryAfter.Seconds())))
}

// SignupMode is KGENTS_SIGNUP.
type SignupMode string

// The sign-up modes.
const (
	SignupOff    SignupMode = "off"
	SignupInvite SignupMode = "invite"
	SignupOpen   SignupMode = "open"
)

// ParseSignupMode reads KGENTS_SIGNUP.
func ParseSignupMode(s string) (SignupMode, error) {
	switch m := SignupMode(s); m {
	case SignupOff, SignupInvite, SignupOpen:
		return m, nil
	}
	return "", fmt.Errorf("unknown sign-up mode %q (off, invite, open)", s)
}
