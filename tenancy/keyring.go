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
	KeyID      string // non-secret key identifier (hash prefix)
	TenantID   string
	UserID     string
	Tier       Tier
	Scopes     Scope
	Archetypes []string
	// Limits are the tenant's tier limits narrowed by the key's own.
	Limits Limits
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
	h := HashKey(raw)
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

// Tiers returns the tier table in force.
func (k *Keyring) Tiers() Tiers { return k.tiers }

// Size is the number of usable keys.
func (k *Keyring) Size() int { return len(k.snap.Load().identities) }
