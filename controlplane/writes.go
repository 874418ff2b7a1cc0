package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"github.com/kgents/kgents-go/tenancy"
)

// Every write is audited first (Service.audited): the change is computed
// from the records as read, its audit entry appended, and only then the
// change written, with compare-and-set on the revisions read, so no change
// stands without its entry even if NATS drops between the two. Checks that
// refuse a request (email taken, invite used) read before the entry is
// appended, so a refused request leaves no entry unless it lost a race.
// Each write is applied to this replica's cache at once (read-your-writes);
// other replicas see it through their watch.

func (s *Service) loadTenant(ctx context.Context, id string) (*tenantRecord, uint64, error) {
	if s.readOnlyTenant(id) != nil {
		return nil, 0, fmt.Errorf("%w: tenant %s", ErrReadOnly, id)
	}
	e, err := s.tenants.Get(ctx, id)
	if errors.Is(err, errNoKey) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, wrapStore(ctx, err)
	}
	r, err := decode[tenantRecord](e.value)
	return r, e.rev, err
}

func (s *Service) putTenant(ctx context.Context, r *tenantRecord, rev uint64) (uint64, error) {
	var n uint64
	var err error
	if rev == 0 {
		n, err = s.tenants.Create(ctx, r.ID, encode(r))
	} else {
		n, err = s.tenants.Update(ctx, r.ID, encode(r), rev)
	}
	if err != nil {
		return 0, wrapStore(ctx, err)
	}
	s.cache.apply(bTenants, entry{key: r.ID, value: encode(r), rev: n}, true)
	return n, nil
}

func (s *Service) putKey(ctx context.Context, r *keyRecord, rev uint64) (uint64, error) {
	var n uint64
	var err error
	if rev == 0 {
		n, err = s.keys.Create(ctx, r.ID, encode(r))
	} else {
		n, err = s.keys.Update(ctx, r.ID, encode(r), rev)
	}
	if err != nil {
		return 0, wrapStore(ctx, err)
	}
	s.cache.apply(bKeys, entry{key: r.ID, value: encode(r), rev: n}, true)
	return n, nil
}

// undoTenant deletes a tenant this call created (at revision rev) when a
// later step of the same change fails.
func (s *Service) undoTenant(ctx context.Context, id string, rev uint64) {
	if err := s.tenants.Delete(ctx, id, rev); err == nil {
		s.cache.apply(bTenants, entry{key: id, rev: rev + 1<<40, deleted: true}, true)
	}
}

// undoKey deletes a key this call created (at revision rev).
func (s *Service) undoKey(ctx context.Context, id string, rev uint64) {
	if err := s.keys.Delete(ctx, id, rev); err == nil {
		s.cache.apply(bKeys, entry{key: id, rev: rev + 1<<40, deleted: true}, true)
	}
}

// emailTaken is the read-only check before a change's entry is written:
// most requests for a taken address are refused without an entry (the
// claim in claimEmail is what decides a race).
func (s *Service) emailTaken(ctx context.Context, email string) error {
	_, err := s.emails.Get(ctx, emailKey(email))
	switch {
	case err == nil:
		return fmt.Errorf("%w: a tenant with this email exists", ErrExists)
	case errors.Is(err, errNoKey):
		return nil
	}
	return wrapStore(ctx, err)
}

// claimEmail takes an address in the email index with create semantics, so
// that of two replicas racing for it exactly one wins; release gives it back.
func (s *Service) claimEmail(ctx context.Context, email, tenantID string) (release func(context.Context), err error) {
	k := emailKey(email)
	rev, err := s.emails.Create(ctx, k, []byte(tenantID))
	if errors.Is(err, errKeyExists) {
		return nil, fmt.Errorf("%w: a tenant with this email exists", ErrExists)
	}
	if err != nil {
		return nil, wrapStore(ctx, err)
	}
	return func(ctx context.Context) { _ = s.emails.Delete(ctx, k, rev) }, nil
}

// CreateTenant implements Manager.
func (s *Service) CreateTenant(ctx context.Context, a Actor, name, email string, tier tenancy.Tier) (*Tenant, error) {
	if err := needOperator(a); err != nil {
		return nil, err
	}
	r, err := s.newTenantRecord(name, email, tier)
	if err != nil {
		return nil, err
	}
	if err := s.writable(); err != nil {
		return nil, err
	}
	if err := s.emailTaken(ctx, r.Email); err != nil {
		return nil, err
	}
	e := s.entry(a, r.ID, "tenant.create", map[string]Change{
		"name": {nil, r.Name}, "email": {nil, r.Email}, "tier": {nil, string(r.Tier)}, "status": {nil, string(r.Status)},
	})
	r.AuditID = e.ID
	err = s.audited(ctx, e, func() error {
		release, err := s.claimEmail(ctx, r.Email, r.ID)
		if err != nil {
			return err
		}
		if _, err := s.putTenant(ctx, r, 0); err != nil {
			release(context.WithoutCancel(ctx))
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.tenant(), nil
}

func (s *Service) newTenantRecord(name, email string, tier tenancy.Tier) (*tenantRecord, error) {
	name, err := checkText("name", name, 200)
	if err != nil {
		return nil, err
	}
	if email, err = checkEmail(email); err != nil {
		return nil, err
	}
	if tier, err = checkTier(tier); err != nil {
		return nil, err
	}
	now := s.now()
	return &tenantRecord{V: 1, ID: uuid.NewString(), Name: name, Email: email, Tier: tier, Status: StatusActive, CreatedAt: now, UpdatedAt: now}, nil
}

func num(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// UpdateTenant implements Manager.
func (s *Service) UpdateTenant(ctx context.Context, a Actor, id string, p TenantPatch) (*Tenant, error) {
	if err := needOperator(a); err != nil {
		return nil, err
	}
	if _, err := uuid.Parse(id); err != nil {
		return nil, invalid("id", "not a UUID")
	}
	// Validate everything before reading or writing anything.
	var name, email string
	var tier tenancy.Tier
	var st Status
	var err error
	if p.Name != nil {
		if name, err = checkText("name", *p.Name, 200); err != nil {
			return nil, err
		}
	}
	if p.Email != nil {
		if email, err = checkEmail(*p.Email); err != nil {
			return nil, err
		}
	}
	if p.Tier != nil {
		if tier, err = checkTier(*p.Tier); err != nil {
			return nil, err
		}
	}
	if p.Status != nil {
		if st, err = ParseStatus(string(*p.Status)); err != nil {
			return nil, invalid("status", "unknown status %q (active, past_due, suspended, canceled)", string(*p.Status))
		}
	}
	if p.Limits != nil {
		if err := checkLimits(*p.Limits); err != nil {
			return nil, err
		}
	}
	if err := s.writable(); err != nil {
		return nil, err
	}
	old, rev, err := s.loadTenant(ctx, id)
	if err != nil {
		return nil, err
	}
	r := *old
	d := map[string]Change{}
	if p.Name != nil && name != r.Name {
		d["name"] = Change{r.Name, name}
		r.Name = name
	}
	newEmail := false // the change moves the tenant to another address in the index
	if p.Email != nil && email != r.Email {
		d["email"] = Change{r.Email, email}
		if emailKey(email) != emailKey(r.Email) {
			if err := s.emailTaken(ctx, email); err != nil {
				return nil, err
			}
			newEmail = true
		}
		r.Email = email
	}
	if p.Tier != nil && tier != r.Tier {
		d["tier"] = Change{string(r.Tier), string(tier)}
		r.Tier = tier
	}
	if p.Status != nil && st != r.Status {
		d["status"] = Change{string(r.Status), string(st)}
		r.Status = st
	}
	if p.Limits != nil {
		nl := limitsRecord{p.Limits.RequestsPerMinute, p.Limits.RequestsPerDay, p.Limits.TokensPerMonth}
		for _, f := range []struct {
			name     string
			old, new *int64
		}{{"limits.requests_per_minute", r.Limits.RequestsPerMinute, nl.RequestsPerMinute},
			{"limits.requests_per_day", r.Limits.RequestsPerDay, nl.RequestsPerDay},
			{"limits.tokens_per_month", r.Limits.TokensPerMonth, nl.TokensPerMonth}} {
			if num(f.old) != num(f.new) {
				d[f.name] = Change{num(f.old), num(f.new)}
			}
		}
		r.Limits = nl
	}
	if len(d) == 0 {
		return old.tenant(), nil
	}
	r.UpdatedAt = s.now()
	e := s.entry(a, id, "tenant.update", d)
	r.AuditID = e.ID
	err = s.audited(ctx, e, func() error {
		var release func(context.Context)
		if newEmail {
			rel, err := s.claimEmail(ctx, r.Email, r.ID)
			if err != nil {
				return err
			}
			release = rel
		}
		if _, err := s.putTenant(ctx, &r, rev); err != nil {
			if release != nil {
				release(context.WithoutCancel(ctx))
			}
			return err
		}
		if newEmail {
			_ = s.emails.Delete(context.WithoutCancel(ctx), emailKey(old.Email), 0)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.tenant(), nil
}

func (s *Service) checkKeySpec(spec KeySpec) (string, []string, error) {
	name, err := checkText("name", spec.Name, 100)
	if err != nil {
		return "", nil, err
	}
	if spec.Scopes == 0 {
		return "", nil, invalid("scopes", "at least one scope (read, write, admin, operator)")
	}
	if spec.Scopes&^allScopes != 0 {
		return "", nil, invalid("scopes", "unknown scope")
	}
	arch, err := checkArchetypes(spec.Archetypes)
	if err != nil {
		return "", nil, err
	}
	if spec.ExpiresAt != nil {
		if !spec.ExpiresAt.After(s.now()) {
			return "", nil, invalid("expires_at", "must be in the future")
		}
		if spec.ExpiresAt.After(s.now().AddDate(10, 0, 0)) {
			return "", nil, invalid("expires_at", "at most 10 years ahead")
		}
	}
	return name, arch, nil
}

// tenantForKeys checks that a may manage tenantID's keys.
func (s *Service) tenantForKeys(a Actor, tenantID string) error {
	if err := reach(a, tenantID); err != nil {
		return err
	}
	if !a.IsOperator() && !a.Scopes.Has(tenancy.ScopeAdmin) && !a.system {
		return fmt.Errorf("%w: requires 'admin' scope", ErrForbidden)
	}
	if s.readOnlyTenant(tenantID) != nil {
		return fmt.Errorf("%w: tenant %s", ErrReadOnly, tenantID)
	}
	if s.cache.snap.Load().tenants[tenantID] == nil {
		return ErrNotFound
	}
	return nil
}

func (s *Service) mintKey(tenantID, name string, scopes tenancy.Scope, arch []string, exp *time.Time) (*keyRecord, string) {
	secret := newSecret()
	h := tenancy.HashKey(secret)
	return &keyRecord{
		V: 1, ID: newKeyID(), TenantID: tenantID, Name: name, Prefix: secret[:12],
		SHA256: fmt.Sprintf("%x", h[:]), Scopes: scopes.Names(), Archetypes: arch,
		ExpiresAt: exp, CreatedAt: s.now(),
	}, secret
}

func keyDetail(r *keyRecord) map[string]Change {
	d := map[string]Change{
		"key_id": {nil, r.ID}, "name": {nil, r.Name}, "scopes": {nil, r.Scopes}, "archetypes": {nil, r.Archetypes},
	}
	if r.ExpiresAt != nil {
		d["expires_at"] = Change{nil, r.ExpiresAt.Format(time.RFC3339)}
	}
	return d
}

// CreateKey implements Manager.
func (s *Service) CreateKey(ctx context.Context, a Actor, tenantID string, spec KeySpec) (*Key, string, error) {
	if err := s.tenantForKeys(a, tenantID); err != nil {
		return nil, "", err
	}
	name, arch, err := s.checkKeySpec(spec)
	if err != nil {
		return nil, "", err
	}
	if err := noEscalation(a, spec.Scopes, arch); err != nil {
		return nil, "", err
	}
	if err := s.writable(); err != nil {
		return nil, "", err
	}
	r, secret := s.mintKey(tenantID, name, spec.Scopes, arch, spec.ExpiresAt)
	e := s.entry(a, tenantID, "key.create", keyDetail(r))
	r.AuditID = e.ID
	if err := s.audited(ctx, e, func() error { _, err := s.putKey(ctx, r, 0); return err }); err != nil {
		return nil, "", err
	}
	return r.key(), secret, nil
}

func (s *Service) loadKey(ctx context.Context, a Actor, tenantID, keyID string) (*keyRecord, uint64, error) {
	if err := s.tenantForKeys(a, tenantID); err != nil {
		return nil, 0, err
	}
	e, err := s.keys.Get(ctx, keyID)
	if errors.Is(err, errNoKey) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, wrapStore(ctx, err)
	}
	r, err := decode[keyRecord](e.value)
	if err != nil {
		return nil, 0, err
	}
	if r.TenantID != tenantID {
		return nil, 0, ErrNotFound // another tenant's key id
	}
	return r, e.rev, nil
}

// writeKey writes mutate's change to a key whose record was read at
// revision rev as old, with compare-and-set; when the record changed
// meanwhile (last_used_at marks are written concurrently) it re-reads it
// and re-applies mutate. It returns the record written.
func (s *Service) writeKey(ctx context.Context, old *keyRecord, rev uint64, auditID string, mutate func(*keyRecord) error) (*keyRecord, error) {
	for attempt := 0; ; attempt++ {
		r := *old
		if err := mutate(&r); err != nil {
			return nil, err
		}
		r.AuditID = auditID
		n, err := s.keys.Update(ctx, r.ID, encode(&r), rev)
		if err == nil {
			s.cache.apply(bKeys, entry{key: r.ID, value: encode(&r), rev: n}, true)
			return &r, nil
		}
		if !errors.Is(err, errConflict) || attempt >= 5 {
			return nil, wrapStore(ctx, err)
		}
		e, err := s.keys.Get(ctx, r.ID)
		if err != nil {
			return nil, wrapStore(ctx, err)
		}
		if old, err = decode[keyRecord](e.value); err != nil {
			return nil, err
		}
		rev = e.rev
	}
}

var errUnchanged = errors.New("unchanged")

// RevokeKey implements Manager.
func (s *Service) RevokeKey(ctx context.Context, a Actor, tenantID, keyID string) (*Key, error) {
	if len(keyID) > 64 || keyID == "" {
		return nil, invalid("key_id", "not a key id")
	}
	if err := s.writable(); err != nil {
		return nil, err
	}
	old, rev, err := s.loadKey(ctx, a, tenantID, keyID)
	if err != nil {
		return nil, err
	}
	if old.RevokedAt != nil {
		return old.key(), nil
	}
	now := s.now()
	revoke := func(r *keyRecord) error {
		if r.RevokedAt != nil {
			return errUnchanged
		}
		r.RevokedAt = &now
		return nil
	}
	e := s.entry(a, tenantID, "key.revoke", map[string]Change{"key_id": {old.ID, old.ID}, "revoked_at": {nil, now.Format(time.RFC3339Nano)}})
	var r *keyRecord
	err = s.audited(ctx, e, func() error {
		var err error
		r, err = s.writeKey(ctx, old, rev, e.ID, revoke)
		return err
	})
	if errors.Is(err, errUnchanged) { // revoked meanwhile by another call
		if cur, _, lerr := s.loadKey(ctx, a, tenantID, keyID); lerr == nil {
			return cur.key(), nil
		}
	}
	if err != nil {
		return nil, err
	}
	return r.key(), nil
}

// RotateKey implements Manager.
func (s *Service) RotateKey(ctx context.Context, a Actor, tenantID, keyID string, grace time.Duration) (*Key, string, error) {
	if len(keyID) > 64 || keyID == "" {
		return nil, "", invalid("key_id", "not a key id")
	}
	if grace < 0 || grace > MaxGrace {
		return nil, "", invalid("grace_seconds", "must be 0–%d", int64(MaxGrace/time.Second))
	}
	if grace == 0 {
		grace = DefaultGrace
	}
	if err := s.writable(); err != nil {
		return nil, "", err
	}
	old, rev, err := s.loadKey(ctx, a, tenantID, keyID)
	if err != nil {
		return nil, "", err
	}
	if old.RevokedAt != nil {
		return nil, "", invalid("key_id", "the key is revoked")
	}
	now := s.now()
	if old.ExpiresAt != nil && !old.ExpiresAt.After(now) {
		return nil, "", invalid("key_id", "the key has expired")
	}
	if err := noEscalation(a, old.scopes(), old.Archetypes); err != nil {
		return nil, "", err
	}
	nr, secret := s.mintKey(tenantID, old.Name, old.scopes(), slices.Clone(old.Archetypes), old.ExpiresAt)
	end := now.Add(grace)
	expire := func(r *keyRecord) error {
		if r.RevokedAt != nil {
			return invalid("key_id", "the key is revoked")
		}
		if r.ExpiresAt == nil || end.Before(*r.ExpiresAt) {
			r.ExpiresAt = &end
		}
		r.RotatedTo = nr.ID
		return nil
	}
	after := *old
	_ = expire(&after)
	d := keyDetail(nr)
	d["rotated_from"] = Change{nil, old.ID}
	d["old_expires_at"] = Change{timeOrNil(old.ExpiresAt), after.ExpiresAt.Format(time.RFC3339)}
	e := s.entry(a, tenantID, "key.rotate", d)
	nr.AuditID = e.ID
	err = s.audited(ctx, e, func() error {
		// The new key first: should the old key's update fail, nobody is
		// left without a working key.
		nrev, err := s.putKey(ctx, nr, 0)
		if err != nil {
			return err
		}
		if _, err := s.writeKey(ctx, old, rev, e.ID, expire); err != nil {
			s.undoKey(context.WithoutCancel(ctx), nr.ID, nrev)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return nr.key(), secret, nil
}

func timeOrNil(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.Format(time.RFC3339)
}

// CreateInvite implements Manager.
func (s *Service) CreateInvite(ctx context.Context, a Actor, tier tenancy.Tier, expiresIn time.Duration) (*Invite, error) {
	if err := needOperator(a); err != nil {
		return nil, err
	}
	if tier == "" {
		tier = tenancy.TierFree
	}
	tier, err := checkTier(tier)
	if err != nil {
		return nil, err
	}
	if expiresIn < 0 || expiresIn > MaxInviteTTL {
		return nil, invalid("expires_in", "must be 0–%d seconds", int64(MaxInviteTTL/time.Second))
	}
	if expiresIn == 0 {
		expiresIn = DefaultInviteTTL
	}
	if err := s.writable(); err != nil {
		return nil, err
	}
	r := &inviteRecord{Code: "inv_" + randomBase62(24), Tier: tier, ExpiresAt: s.now().Add(expiresIn), CreatedBy: a.KeyID}
	// The code is a credential for sign-up: the entry records the tier and
	// expiry, not the code.
	e := s.entry(a, "", "invite.create", map[string]Change{"tier": {nil, string(tier)}, "expires_at": {nil, r.ExpiresAt.Format(time.RFC3339)}})
	r.AuditID = e.ID
	err = s.audited(ctx, e, func() error {
		_, err := s.invites.Create(ctx, r.Code, encode(r))
		return wrapStore(ctx, err)
	})
	if err != nil {
		return nil, err
	}
	return &Invite{Code: r.Code, Tier: r.Tier, ExpiresAt: r.ExpiresAt}, nil
}

// readInvite reads and checks an invite code (no write).
func (s *Service) readInvite(ctx context.Context, code string) (*inviteRecord, uint64, error) {
	e, err := s.invites.Get(ctx, code)
	if errors.Is(err, errNoKey) {
		return nil, 0, invalid("invite_code", "unknown invite code")
	}
	if err != nil {
		return nil, 0, wrapStore(ctx, err)
	}
	inv, err := decode[inviteRecord](e.value)
	if err != nil {
		return nil, 0, err
	}
	if inv.UsedAt != nil {
		return nil, 0, invalid("invite_code", "the invite code has been used")
	}
	if !s.now().Before(inv.ExpiresAt) {
		return nil, 0, invalid("invite_code", "the invite code has expired")
	}
	return inv, e.rev, nil
}

// Signup implements Manager.
func (s *Service) Signup(ctx context.Context, email, name, inviteCode, clientAddr string) (*Tenant, *Key, string, error) {
	mode := s.o.Signup
	if mode == SignupOff {
		return nil, nil, "", ErrSignupOff
	}
	tr, err := s.newTenantRecord(name, email, tenancy.TierFree)
	if err != nil {
		return nil, nil, "", err
	}
	if mode == SignupInvite && inviteCode == "" {
		return nil, nil, "", invalid("invite_code", "required")
	}
	if len(inviteCode) > 64 {
		return nil, nil, "", invalid("invite_code", "unknown invite code")
	}
	if wait := s.limiter.take(clientAddr, s.o.Now()); wait > 0 {
		return nil, nil, "", &RateLimitedError{RetryAfter: wait}
	}
	if err := s.writable(); err != nil {
		return nil, nil, "", err
	}
	if err := s.emailTaken(ctx, tr.Email); err != nil {
		return nil, nil, "", err
	}
	d := map[string]Change{}
	var inv *inviteRecord
	var irev uint64
	if inviteCode != "" {
		if inv, irev, err = s.readInvite(ctx, inviteCode); err != nil {
			return nil, nil, "", err
		}
		tr.Tier = inv.Tier
		d["invite"] = Change{nil, "used"}
	}
	kr, secret := s.mintKey(tr.ID, "default", tenancy.ScopeRead|tenancy.ScopeWrite|tenancy.ScopeAdmin, slices.Clone(tenancy.DefaultArchetypes), nil)
	for k, v := range map[string]Change{"name": {nil, tr.Name}, "email": {nil, tr.Email}, "tier": {nil, string(tr.Tier)}, "key_id": {nil, kr.ID}, "scopes": {nil, kr.Scopes}} {
		d[k] = v
	}
	e := s.entry(SystemActor("system"), tr.ID, "signup", d)
	tr.AuditID, kr.AuditID = e.ID, e.ID
	err = s.audited(ctx, e, func() error {
		bg := context.WithoutCancel(ctx)
		var undo []func(context.Context)
		fail := func(err error) error {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i](bg)
			}
			return err
		}
		release, err := s.claimEmail(ctx, tr.Email, tr.ID)
		if err != nil {
			return err
		}
		undo = append(undo, release)
		if inv != nil {
			used := *inv
			used.UsedAt, used.UsedBy, used.AuditID = ptr(s.now()), tr.ID, e.ID
			urev, err := s.invites.Update(ctx, inviteCode, encode(&used), irev)
			if errors.Is(err, errConflict) {
				return fail(invalid("invite_code", "the invite code has been used"))
			}
			if err != nil {
				return fail(wrapStore(ctx, err))
			}
			undo = append(undo, func(ctx context.Context) { _, _ = s.invites.Update(ctx, inviteCode, encode(inv), urev) })
		}
		trev, err := s.putTenant(ctx, tr, 0)
		if err != nil {
			return fail(err)
		}
		undo = append(undo, func(ctx context.Context) { s.undoTenant(ctx, tr.ID, trev) })
		if _, err := s.putKey(ctx, kr, 0); err != nil {
			return fail(err)
		}
		return nil
	})
	if err != nil {
		return nil, nil, "", err
	}
	return tr.tenant(), kr.key(), secret, nil
}

// signupLimiter is a token bucket per client address (SIGNUP_RATE per
// hour, golang.org/x/time/rate), on this replica only: with N replicas
// behind a load balancer a client may get up to N times the rate —
// approximate, as SPEC allows, and without a NATS round trip. At most 65,536
// addresses are tracked (least recently seen forgotten first: a forgotten
// address starts again with a full bucket).
type signupLimiter struct {
	every  rate.Limit
	burst  int
	mu     sync.Mutex // makes look-up-or-add atomic
	states *lru.Cache[string, *rate.Limiter]
}

func newSignupLimiter(perWindow int, window time.Duration) *signupLimiter {
	c, _ := lru.New[string, *rate.Limiter](65536)
	return &signupLimiter{every: rate.Limit(float64(perWindow) / window.Seconds()), burst: perWindow, states: c}
}

// take spends one token for addr, or says how long until one is available
// (a refused sign-up spends nothing).
func (l *signupLimiter) take(addr string, now time.Time) time.Duration {
	l.mu.Lock()
	lim, ok := l.states.Get(addr)
	if !ok {
		lim = rate.NewLimiter(l.every, l.burst)
		l.states.Add(addr, lim)
	}
	l.mu.Unlock()
	if lim.AllowN(now, 1) {
		return 0
	}
	return time.Duration((1 - lim.TokensAt(now)) / float64(l.every) * float64(time.Second))
}
