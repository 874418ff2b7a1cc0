package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/tenancy"
)

// Options configure a Service.
type Options struct {
	// Tiers is the tier table (tenancy.DefaultTiers() when nil).
	Tiers tenancy.Tiers
	// Keyring is the read-only source (key file, dev keys); may be nil.
	Keyring *tenancy.Keyring
	// Signup is KGENTS_SIGNUP (SignupOff when empty).
	Signup SignupMode
	// SignupRate is SIGNUP_RATE: sign-ups per hour per client address (5 when 0).
	SignupRate int
	Logger     *slog.Logger
	Now        func() time.Time // for tests
	// LastUsedEvery is how often at most a key's last_used_at is written
	// (DefaultLastUsedEvery when 0).
	LastUsedEvery time.Duration
}

// Service is the Manager and the authenticator (auth.Authenticator) of one
// replica. Build it with NewMemory or NewJetStream, then Run it.
type Service struct {
	o        Options
	tenants  bucket
	keys     bucket
	emails   bucket
	invites  bucket
	audit    auditLog
	cache    *cache
	js       []*jsBucket // nil in memory
	jsAudit  *jsAudit
	conn     func() bool
	restart  [2]chan struct{}
	usedQ    chan usedReq
	sweepNow chan chan struct{} // tests: clear due marks now (after moving Options.Now), then close the channel sent
	limiter  *signupLimiter
	watching bool
}

var _ Manager = (*Service)(nil)

// NewMemory returns a Service on in-memory stores (NATS_ENABLED=false,
// unit tests): one replica only. It needs no Run for the Manager and
// authentication; Run writes last_used_at.
func NewMemory(o Options) *Service {
	s := newService(o)
	s.tenants, s.keys, s.emails, s.invites = newMemBucket(), newMemBucket(), newMemBucket(), newMemBucket()
	s.audit = &memAudit{}
	s.cache.ready = [2]bool{true, true}
	s.cache.synced.Store(true)
	s.cache.lastSync.Store(time.Now().UnixNano())
	return s
}

// NewJetStream returns a Service on the JetStream buckets and stream,
// created or updated on first use (every replica, idempotent). connected
// reports whether NATS is reachable (writes fail fast with ErrUnavailable
// while it is not; nil: always try). Run must be running for the cache
// to follow other replicas' changes; call Reconnected from the
// connection's reconnect hook.
func NewJetStream(js jetstream.JetStream, replicas int, connected func() bool, o Options) *Service {
	s := newService(o)
	t := newJSBucket(js, TenantsBucket, "kgents tenants, key <tenant id>", replicas, connected)
	k := newJSBucket(js, KeysBucket, "kgents API keys (SHA-256 only), key <key id>", replicas, connected)
	e := newJSBucket(js, EmailsBucket, "kgents tenant email index, key sha256(lower(email)) → tenant id", replicas, connected)
	i := newJSBucket(js, InvitesBucket, "kgents sign-up invites, key <code>", replicas, connected)
	s.tenants, s.keys, s.emails, s.invites = t, k, e, i
	s.js = []*jsBucket{t, k, e, i}
	s.jsAudit = &jsAudit{js: js, replicas: replicas, connected: connected}
	s.audit = s.jsAudit
	s.conn = connected
	s.watching = true
	return s
}

func newService(o Options) *Service {
	if o.Tiers == nil {
		o.Tiers = tenancy.DefaultTiers()
	}
	if o.Signup == "" {
		o.Signup = SignupOff
	}
	if o.SignupRate <= 0 {
		o.SignupRate = 5
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LastUsedEvery <= 0 {
		o.LastUsedEvery = DefaultLastUsedEvery
	}
	return &Service{
		o: o, cache: newCache(o.Tiers),
		restart:  [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)},
		usedQ:    make(chan usedReq, 1024),
		sweepNow: make(chan chan struct{}),
		limiter:  newSignupLimiter(o.SignupRate, time.Hour),
	}
}

// Run follows the buckets (JetStream) and writes last_used_at until ctx
// ends; it returns when all its goroutines have.
func (s *Service) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() { defer close(done); s.lastUsedWriter(ctx) }()
	if s.watching {
		wd := make(chan struct{}, 2)
		onErr := func(err error) {
			if ctx.Err() == nil {
				s.o.Logger.Warn("control plane: watch interrupted; resuming from the last revision seen", "error", err)
			}
		}
		go func() { s.cache.watchLoop(ctx, bTenants, s.tenants, s.restart[bTenants], onErr); wd <- struct{}{} }()
		go func() { s.cache.watchLoop(ctx, bKeys, s.keys, s.restart[bKeys], onErr); wd <- struct{}{} }()
		<-wd
		<-wd
	}
	<-done
}

// Reconnected restarts the watches from the last revision seen and makes
// the next write re-create the buckets and stream (hook it to the NATS
// connection's reconnect).
func (s *Service) Reconnected() {
	for _, b := range s.js {
		b.reset()
	}
	if s.jsAudit != nil {
		s.jsAudit.reset()
	}
	for _, ch := range s.restart {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// WaitSynced waits until the cache has caught up with both buckets (or
// ctx ends). Start-up may call it so the first requests see managed keys.
func (s *Service) WaitSynced(ctx context.Context) error {
	for !s.cache.synced.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// Health is the control plane's part of /health/saas.
type Health struct {
	// Status: "ok" (following the buckets), "stale" (NATS away or the
	// watch restarting: authentication serves the last known state,
	// writes answer 503), "memory" (NATS disabled).
	Status   string
	LastSync time.Time
	Tenants  int
	Keys     int
}

// Health reports the cache's state.
func (s *Service) Health() Health {
	snap := s.cache.snap.Load()
	h := Health{Status: "ok", LastSync: time.Unix(0, s.cache.lastSync.Load()), Tenants: len(snap.tenants), Keys: len(snap.byHash)}
	switch {
	case !s.watching:
		h.Status = "memory"
	case !s.cache.synced.Load() || (s.conn != nil && !s.conn()):
		h.Status = "stale"
	}
	return h
}

// Authenticate checks a raw key: managed keys from the cache, then the
// read-only Keyring. It makes no NATS call. The Identity returned is
// shared: callers must not modify it.
func (s *Service) Authenticate(raw string) (*tenancy.Identity, error) {
	if raw == "" {
		return nil, tenancy.ErrKeyMissing
	}
	if !strings.HasPrefix(raw, tenancy.KeyPrefix) || len(raw) > 256 {
		return nil, tenancy.ErrKeyFormat
	}
	h := tenancy.HashKey(raw)
	if e, ok := s.cache.snap.Load().byHash[h]; ok {
		// The clock is read only for a key that expires: time.Now costs
		// about as much as the rest of this path together.
		if e.expires != 0 && s.o.Now().UnixNano() >= e.expires {
			return nil, tenancy.ErrKeyExpired
		}
		if !e.used.pending.Load() && e.used.pending.CompareAndSwap(false, true) {
			select {
			case s.usedQ <- usedReq{id: e.id.KeyPublicID, mark: e.used}:
			default: // full: the mark is approximate; a later use tries again
				e.used.pending.Store(false)
			}
		}
		return e.id, nil
	}
	if s.o.Keyring == nil {
		return nil, tenancy.ErrKeyUnknown
	}
	return s.o.Keyring.AuthenticateHash(h)
}

// DefaultLastUsedEvery is how often at most last_used_at is written per key.
const DefaultLastUsedEvery = time.Minute

type usedReq struct {
	id   string
	mark *usedMark
}

// lastUsedWriter writes last_used_at marks queued by Authenticate, off the
// request path, until ctx ends, and clears each key's mark LastUsedEvery
// after its write (so its next use queues the next write). A write that
// loses a race (the key changed) is dropped: the mark is approximate.
func (s *Service) lastUsedWriter(ctx context.Context) {
	type due struct {
		mark *usedMark
		at   time.Time
	}
	var waiting []due // in order of at (appended with now+LastUsedEvery)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	rearm := func() {
		timer.Stop()
		if len(waiting) > 0 {
			timer.Reset(max(0, waiting[0].at.Sub(s.o.Now())))
		}
	}
	sweep := func() {
		now := s.o.Now()
		n := 0
		for n < len(waiting) && !now.Before(waiting[n].at) {
			waiting[n].mark.pending.Store(false)
			n++
		}
		waiting = slices.Delete(waiting, 0, n)
		rearm()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			sweep()
		case done := <-s.sweepNow:
			sweep()
			close(done)
		case req := <-s.usedQ:
			s.writeLastUsed(ctx, req.id)
			waiting = append(waiting, due{mark: req.mark, at: s.o.Now().Add(s.o.LastUsedEvery)})
			if len(waiting) == 1 {
				rearm()
			}
		}
	}
}

func (s *Service) writeLastUsed(ctx context.Context, id string) {
	e, err := s.keys.Get(ctx, id)
	if err != nil {
		return
	}
	r, err := decode[keyRecord](e.value)
	if err != nil || r.RevokedAt != nil {
		return
	}
	r.LastUsedAt = ptr(s.o.Now().UTC().Truncate(time.Second))
	if rev, err := s.keys.Update(ctx, id, encode(r), e.rev); err == nil {
		s.cache.apply(bKeys, entry{key: id, value: encode(r), rev: rev}, true)
	}
}

func readOnlyKeyID(hashID string) string { return "file_" + hashID }

// writable fails fast while NATS is away.
func (s *Service) writable() error {
	if s.conn != nil && !s.conn() {
		return fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
	}
	return nil
}

func (s *Service) now() time.Time { return s.o.Now().UTC() }

// ---- reads ----

func (s *Service) readOnlyTenant(id string) *Tenant {
	if s.o.Keyring == nil {
		return nil
	}
	t, ok := s.o.Keyring.Tenant(id)
	if !ok {
		return nil
	}
	return &Tenant{ID: t.ID, Name: t.Name, Tier: t.Tier, Status: StatusActive, ReadOnly: true}
}

// GetTenant implements Manager.
func (s *Service) GetTenant(_ context.Context, id string) (*Tenant, error) {
	if t := s.readOnlyTenant(id); t != nil {
		return t, nil
	}
	if t := s.cache.snap.Load().tenants[id]; t != nil {
		return t.rec.tenant(), nil
	}
	return nil, ErrNotFound
}

// ListTenants implements Manager.
func (s *Service) ListTenants(_ context.Context, f TenantFilter, offset, limit int) ([]*Tenant, int, error) {
	if limit < 1 || limit > 100 {
		return nil, 0, invalid("limit", "must be 1–100")
	}
	if offset < 0 {
		return nil, 0, invalid("offset", "must not be negative")
	}
	var all []*Tenant
	for _, t := range s.cache.snap.Load().tenants {
		all = append(all, t.rec.tenant())
	}
	slices.SortFunc(all, func(a, b *Tenant) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	if s.o.Keyring != nil {
		for _, t := range s.o.Keyring.Tenants() {
			all = append(all, s.readOnlyTenant(t.ID))
		}
	}
	q := strings.ToLower(strings.TrimSpace(f.Query))
	var match []*Tenant
	for _, t := range all {
		if (f.Tier == nil || t.Tier == *f.Tier) && (f.Status == nil || t.Status == *f.Status) &&
			(q == "" || strings.Contains(strings.ToLower(t.Name), q) || strings.Contains(strings.ToLower(t.Email), q)) {
			match = append(match, t)
		}
	}
	total := len(match)
	if offset >= total {
		return []*Tenant{}, total, nil
	}
	return match[offset:min(total, offset+limit)], total, nil
}

// ListKeys implements Manager.
func (s *Service) ListKeys(_ context.Context, tenantID string) ([]*Key, error) {
	if ro := s.readOnlyTenant(tenantID); ro != nil {
		out := []*Key{}
		for _, k := range s.o.Keyring.Keys(tenantID) {
			key := &Key{ID: readOnlyKeyID(k.ID()), TenantID: k.TenantID, Name: k.UserID, Scopes: k.Scopes,
				Archetypes: slices.Clone(k.Archetypes), ReadOnly: true}
			if !k.ExpiresAt.IsZero() {
				key.ExpiresAt = ptr(k.ExpiresAt)
			}
			out = append(out, key)
		}
		return out, nil
	}
	snap := s.cache.snap.Load()
	if snap.tenants[tenantID] == nil {
		return nil, ErrNotFound
	}
	out := []*Key{}
	for _, k := range snap.keys {
		if k.rec.TenantID == tenantID {
			out = append(out, k.rec.key())
		}
	}
	slices.SortFunc(out, func(a, b *Key) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// ListAudit implements Manager.
func (s *Service) ListAudit(ctx context.Context, tenantID string, before time.Time, limit int) ([]*AuditEntry, error) {
	if limit < 1 || limit > 100 {
		return nil, invalid("limit", "must be 1–100")
	}
	if tenantID != "" {
		if _, err := uuid.Parse(tenantID); err != nil {
			return nil, invalid("tenant_id", "not a UUID")
		}
	}
	return s.audit.List(ctx, tenantID, before, limit)
}

// ---- validation ----

func checkText(field, v string, maxLen int) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", invalid(field, "required")
	}
	if !utf8.ValidString(v) {
		return "", invalid(field, "not valid UTF-8")
	}
	if utf8.RuneCountInString(v) > maxLen {
		return "", invalid(field, "longer than %d characters", maxLen)
	}
	if strings.IndexFunc(v, unicode.IsControl) >= 0 {
		return "", invalid(field, "contains control characters")
	}
	return v, nil
}

// checkEmail accepts a bare address (no display name), at most 254 characters.
func checkEmail(v string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", invalid("email", "required")
	}
	if len(v) > 254 {
		return "", invalid("email", "longer than 254 characters")
	}
	a, err := mail.ParseAddress(v)
	if err != nil || a.Address != v || a.Name != "" {
		return "", invalid("email", "not an email address")
	}
	at := strings.LastIndexByte(v, '@')
	if at < 1 || !strings.Contains(v[at+1:], ".") || strings.HasSuffix(v, ".") {
		return "", invalid("email", "not an email address")
	}
	return v, nil
}

func checkTier(t tenancy.Tier) (tenancy.Tier, error) {
	tt, err := tenancy.ParseTier(string(t))
	if err != nil {
		return "", invalid("tier", "unknown tier %q (free, pro, enterprise)", string(t))
	}
	return tt, nil
}

const allScopes = tenancy.ScopeRead | tenancy.ScopeWrite | tenancy.ScopeAdmin | tenancy.ScopeOperator

func checkArchetypes(in []string) ([]string, error) {
	if len(in) == 0 {
		return slices.Clone(tenancy.DefaultArchetypes), nil
	}
	if len(in) > 32 {
		return nil, invalid("archetypes", "at most 32")
	}
	out := make([]string, 0, len(in))
	for _, a := range in {
		a = strings.ToLower(strings.TrimSpace(a))
		if a == "" || len(a) > 32 || strings.IndexFunc(a, func(r rune) bool { return (r < 'a' || r > 'z') && r != '_' && r != '-' }) >= 0 {
			return nil, invalid("archetypes", "%q is not an archetype name", a)
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

func checkLimits(l Limits) error {
	for _, f := range []struct {
		name string
		v    *int64
	}{{"limits.requests_per_minute", l.RequestsPerMinute}, {"limits.requests_per_day", l.RequestsPerDay}, {"limits.tokens_per_month", l.TokensPerMonth}} {
		if f.v != nil && *f.v < 0 {
			return invalid(f.name, "must not be negative (0 means unlimited)")
		}
	}
	return nil
}

// ---- authorization ----

func needActor(a Actor) error {
	if a.KeyID == "" {
		return fmt.Errorf("%w: no caller identity", ErrForbidden)
	}
	return nil
}

// reach checks that a may act on tenantID: an operator anywhere, others in
// their own tenant only (another tenant is not found, not forbidden).
func reach(a Actor, tenantID string) error {
	if err := needActor(a); err != nil {
		return err
	}
	if a.IsOperator() || a.TenantID == tenantID {
		return nil
	}
	return ErrNotFound
}

func needOperator(a Actor) error {
	if err := needActor(a); err != nil {
		return err
	}
	if !a.IsOperator() {
		return fmt.Errorf("%w: requires 'operator' scope", ErrForbidden)
	}
	return nil
}

// noEscalation: a key grants only scopes and archetypes it holds itself.
func noEscalation(a Actor, scopes tenancy.Scope, archetypes []string) error {
	if a.system {
		return nil
	}
	if !a.Scopes.Has(scopes) {
		return fmt.Errorf("%w: cannot grant scope '%s' this key does not hold", ErrForbidden, scopes&^a.Scopes)
	}
	for _, ar := range archetypes {
		if !slices.Contains(a.Archetypes, ar) {
			return fmt.Errorf("%w: cannot grant archetype %q this key does not hold", ErrForbidden, ar)
		}
	}
	return nil
}

// ---- audit helpers ----

func (s *Service) entry(a Actor, tenantID, action string, detail map[string]Change) *AuditEntry {
	id, err := uuid.NewV7()
	if err != nil {
		id = uuid.New()
	}
	if detail == nil {
		detail = map[string]Change{}
	}
	return &AuditEntry{ID: "aud_" + id.String(), Time: s.now(), Actor: a.KeyID, TenantID: tenantID, Action: action, Detail: detail}
}

// audited makes one change, audit entry first: it appends e (which names
// the fields' old and new values, the state the change expects) and only
// then runs write, which makes the change with compare-and-set against the
// revisions e was computed from. A change whose entry cannot be appended is
// not made (ErrUnavailable). If write fails after the entry is stored (a
// concurrent change won, NATS dropped), a change.aborted entry naming e is
// appended, best effort, and write's error returned: should NATS be gone by
// then too, e stands alone, and the stored record's audit_id (the entry of
// its current state) still shows the change was not made.
func (s *Service) audited(ctx context.Context, e *AuditEntry, write func() error) error {
	if err := s.audit.Append(ctx, e); err != nil {
		s.o.Logger.Warn("control plane: audit entry not written; change not made", "action", e.Action, "tenant", e.TenantID, "error", err)
		return unavailable(ctx, err)
	}
	if err := write(); err != nil {
		s.aborted(ctx, e, err)
		return err
	}
	return nil
}

// aborted appends the change.aborted entry of e, whose change was not made.
func (s *Service) aborted(ctx context.Context, e *AuditEntry, cause error) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	ab := s.entry(Actor{KeyID: e.Actor}, e.TenantID, "change.aborted", map[string]Change{
		"entry": {nil, e.ID}, "action": {nil, e.Action},
	})
	if err := s.audit.Append(actx, ab); err != nil {
		s.o.Logger.Warn("control plane: change not made after its audit entry was written, and the abort entry could not be written",
			"entry", e.ID, "action", e.Action, "tenant", e.TenantID, "cause", cause, "error", err)
	}
}

func wrapStore(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrUnavailable), ctx.Err() != nil:
		return unavailable(ctx, err)
	case errors.Is(err, errConflict):
		return fmt.Errorf("%w: changed concurrently; retry", ErrUnavailable)
	}
	return unavailable(ctx, err)
}
