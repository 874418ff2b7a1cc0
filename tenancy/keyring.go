package tenancy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Identity is the authenticated caller, carried in the request context.
type Identity struct {
	KeyID      string // non-secret key identifier: a managed key's public id, or Key.ID (never a piece of the hash)
	TenantID   string
	UserID     string
	Tier       Tier
	Scopes     Scope
	Archetypes []string
	// Limits are the tenant's tier limits narrowed by the key's own.
	Limits Limits
	// KeyPublicID is a control-plane key's public id ("key_…"); empty for
	// a key of the key file or a dev key.
	KeyPublicID string
	// TenantStatus is the tenant's standing; empty means active (the key
	// file's and dev tenants are always active).
	TenantStatus TenantStatus
	// GraceUntil is when a past_due tenant stops working (zero: no end).
	GraceUntil time.Time
	// ReadOnly marks a key of the key file or a dev key: it and its tenant
	// cannot be changed through the API.
	ReadOnly bool
}

// Inactive reports whether the tenant may not make ordinary calls at now:
// a suspended or canceled tenant, or a past_due one after its grace. It
// returns the error code for the response ("tenant_suspended",
// "tenant_canceled") and a detail saying what to do; "" when active.
func (id *Identity) Inactive(now time.Time) (code, detail string) {
	switch id.TenantStatus {
	case StatusSuspended:
		return "tenant_suspended", "This tenant is suspended. Settle the account at /v1/billing/portal or contact support to restore access."
	case StatusCanceled:
		return "tenant_canceled", "This tenant's subscription is canceled. Subscribe again at /v1/billing/checkout to restore access."
	case StatusPastDue:
		if !id.GraceUntil.IsZero() && !now.Before(id.GraceUntil) {
			return "tenant_suspended", "Payment is past due and the grace period has ended. Update the payment method at /v1/billing/portal to restore access."
		}
	}
	return "", ""
}

// AllowsArchetype reports whether the key was given the AGENTESE archetype.
func (id *Identity) AllowsArchetype(a string) bool {
	return slices.Contains(id.Archetypes, a)
}

type identityKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the caller's identity, or nil for an unauthenticated call.
func IdentityFrom(ctx context.Context) *Identity {
	id, _ := ctx.Value(identityKey{}).(*Identity)
	return id
}

// AuthError is an authentication failure. Its text is written for the
// caller (and matches the Python service's wording), so it is returned as is.
type AuthError string

func (e AuthError) Error() string { return string(e) }

// Authentication failures.
const (
	ErrKeyMissing AuthError = "API key required. Provide it in the X-API-Key header or as Authorization: Bearer <key>."
	ErrKeyFormat  AuthError = "Invalid API key format. Keys must start with 'kg_'"
	ErrKeyUnknown AuthError = "Invalid API key. Please check your credentials."
	ErrKeyExpired AuthError = "API key expired."
)

// keyring is one consistent view of keys and tenants.
type snapshot struct {
	keys       map[[32]byte]*Key
	tenants    map[string]*Tenant
	identities map[[32]byte]*Identity // precomputed, read-only
}

// Keyring authenticates API keys. It holds the dev keys (when enabled) and
// the keys of KGENTS_API_KEYS_FILE, which it reloads when the file changes or
// on Reload (SIGHUP). A file that fails to load never replaces a good one.
type Keyring struct {
	tiers   Tiers
	devKeys bool
	path    string
	log     *slog.Logger
	now     func() time.Time

	snap    atomic.Pointer[snapshot]
	mu      sync.Mutex // serialises reloads
	lastSum [32]byte
	loaded  atomic.Int64 // reloads that took effect
}

// KeyringOptions configure NewKeyring.
type KeyringOptions struct {
	Tiers    Tiers
	DevKeys  bool
	KeysFile string
	Logger   *slog.Logger
	Now      func() time.Time // for tests; time.Now by default
}

// NewKeyring loads the keys. A key file that cannot be read is an error here
// (at start-up) but only a logged warning on later reloads.
func NewKeyring(o KeyringOptions) (*Keyring, error) {
	if o.Tiers == nil {
		o.Tiers = DefaultTiers()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	k := &Keyring{tiers: o.Tiers, devKeys: o.DevKeys, path: o.KeysFile, log: o.Logger, now: o.Now}
	if err := k.Reload(); err != nil {
		return nil, fmt.Errorf("KGENTS_API_KEYS_FILE: %w", err)
	}
	return k, nil
}

// Reload re-reads the key file. It is a no-op when the contents are unchanged.
func (k *Keyring) Reload() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var tenants []*Tenant
	var keys []*Key
	if k.devKeys {
		tenants, keys = devEntries()
	}
	if k.path != "" {
		data, err := os.ReadFile(k.path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		if k.snap.Load() != nil && bytes.Equal(sum[:], k.lastSum[:]) {
			return nil
		}
		ft, fk, err := parseKeyFile(data)
		if err != nil {
			return fmt.Errorf("%s: %w", k.path, err)
		}
		k.lastSum = sum
		tenants = append(tenants, ft...)
		keys = append(keys, fk...)
	}
	s := &snapshot{
		keys:       make(map[[32]byte]*Key, len(keys)),
		tenants:    make(map[string]*Tenant, len(tenants)),
		identities: make(map[[32]byte]*Identity, len(keys)),
	}
	for _, t := range tenants {
		s.tenants[t.ID] = t
	}
	for _, key := range keys {
		t := s.tenants[key.TenantID]
		if t == nil {
			continue
		}
		s.keys[key.Hash] = key
		s.identities[key.Hash] = &Identity{
			KeyID:      key.ID(),
			TenantID:   t.ID,
			UserID:     key.UserID,
			Tier:       t.Tier,
			Scopes:     key.Scopes,
			Archetypes: key.Archetypes,
			Limits:     k.tiers[t.Tier].Narrow(key.Limits),
			ReadOnly:   true,
		}
	}
	k.snap.Store(s)
	k.loaded.Add(1)
	if k.path != "" {
		k.log.Info("API keys loaded", "file", k.path, "keys", len(s.keys), "tenants", len(s.tenants), "dev_keys", k.devKeys)
	}
	return nil
}

// Watch reloads the key file every interval until ctx ends. Failures are
// logged and the previous keys stay in force.
func (k *Keyring) Watch(ctx context.Context, every time.Duration) {
	if k.path == "" || every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := k.Reload(); err != nil {
				k.log.Error("API key file reload failed; keeping the previous keys", "file", k.path, "error", err)
			}
		}
	}
}

// Authenticate checks a raw key and returns the caller's identity.
func (k *Keyring) Authenticate(raw string) (*Identity, error) {
	if raw == "" {
		return nil, ErrKeyMissing
	}
	if !strings.HasPrefix(raw, KeyPrefix) || len(raw) > 256 {
		return nil, ErrKeyFormat
	}
	return k.AuthenticateHash(HashKey(raw))
}

// AuthenticateHash is Authenticate for a key already checked for format
// and hashed (the control plane's authenticator hashes once for both
// sources).
func (k *Keyring) AuthenticateHash(h [32]byte) (*Identity, error) {
	s := k.snap.Load()
	id, ok := s.identities[h]
	if !ok {
		return nil, ErrKeyUnknown
	}
	if exp := s.keys[h].ExpiresAt; !exp.IsZero() && !k.now().Before(exp) {
		return nil, ErrKeyExpired
	}
	return id, nil
}

// Tenant returns a tenant by id.
func (k *Keyring) Tenant(id string) (*Tenant, bool) {
	t, ok := k.snap.Load().tenants[id]
	return t, ok
}

// Tenants returns the tenants of the key file and the dev keys, by id.
func (k *Keyring) Tenants() []*Tenant {
	s := k.snap.Load()
	out := make([]*Tenant, 0, len(s.tenants))
	for _, t := range s.tenants {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *Tenant) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Keys returns the keys of one tenant of the key file or the dev keys.
func (k *Keyring) Keys(tenantID string) []*Key {
	s := k.snap.Load()
	var out []*Key
	for _, key := range s.keys {
		if key.TenantID == tenantID {
			out = append(out, key)
		}
	}
	slices.SortFunc(out, func(a, b *Key) int { return strings.Compare(a.ID(), b.ID()) })
	return out
}

// Tiers returns the tier table in force.
func (k *Keyring) Tiers() Tiers { return k.tiers }

// Size is the number of usable keys.
func (k *Keyring) Size() int { return len(k.snap.Load().identities) }
