package controlplane_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/controlplane"
	"github.com/kgents/kgents-go/streaming/natstest"
	"github.com/kgents/kgents-go/tenancy"
)

// syncBuf is a log sink shared by every service of a test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// secrets remembers every secret minted in a test and checks that neither
// it nor its hash appears in the logs.
type secrets struct {
	mu  sync.Mutex
	all []string
}

func (s *secrets) add(v string) string {
	s.mu.Lock()
	s.all = append(s.all, v)
	s.mu.Unlock()
	return v
}

func (s *secrets) check(t *testing.T, logs string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.all {
		h := tenancy.HashKey(v)
		for _, needle := range []string{v, v[len(controlplane.SecretPrefix):], hex.EncodeToString(h[:]), hex.EncodeToString(h[:6])} {
			if strings.Contains(logs, needle) {
				t.Errorf("a minted secret or its hash appears in the logs")
			}
		}
	}
}

var operator = controlplane.SystemActor("system")

func opsActor() controlplane.Actor {
	return controlplane.Actor{KeyID: "key_ops", Scopes: tenancy.ScopeRead | tenancy.ScopeWrite | tenancy.ScopeAdmin | tenancy.ScopeOperator,
		Archetypes: []string{"developer", "architect"}, TenantID: tenancy.DevTenantOps}
}

func memService(t *testing.T, mode controlplane.SignupMode) (*controlplane.Service, *syncBuf) {
	t.Helper()
	kr, err := tenancy.NewKeyring(tenancy.KeyringOptions{DevKeys: true})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	s := controlplane.NewMemory(controlplane.Options{Keyring: kr, Signup: mode, SignupRate: 3, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, logs
}

func TestTenantKeyLifecycleMemory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, logs := memService(t, controlplane.SignupOpen)
	var sec secrets
	ten, err := s.CreateTenant(ctx, opsActor(), "Acme", "Billing@Acme.example", tenancy.TierPro)
	if err != nil {
		t.Fatal(err)
	}
	if ten.Status != controlplane.StatusActive || ten.Tier != tenancy.TierPro {
		t.Fatalf("tenant = %+v", ten)
	}
	if _, err := s.CreateTenant(ctx, opsActor(), "Acme 2", "billing@acme.EXAMPLE", tenancy.TierFree); !errors.Is(err, controlplane.ErrExists) {
		t.Fatalf("same email, other case: %v", err)
	}
	admin, secret, err := s.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: "admin", Scopes: tenancy.ScopeRead | tenancy.ScopeWrite | tenancy.ScopeAdmin})
	if err != nil {
		t.Fatal(err)
	}
	sec.add(secret)
	if !strings.HasPrefix(secret, "kg_live_") || len(secret) != 40 || admin.Prefix != secret[:12] || !strings.HasPrefix(admin.ID, "key_") {
		t.Fatalf("key %+v", admin)
	}
	id, err := s.Authenticate(secret)
	if err != nil || id.TenantID != ten.ID || id.KeyPublicID != admin.ID || id.Limits.RequestsPerMinute != 600 {
		t.Fatalf("authenticate: %+v %v", id, err)
	}
	a := controlplane.ActorFrom(id)
	// Escalation: an admin key cannot grant operator, nor an archetype it lacks.
	if _, _, err := s.CreateKey(ctx, a, ten.ID, controlplane.KeySpec{Name: "x", Scopes: tenancy.ScopeOperator}); !errors.Is(err, controlplane.ErrForbidden) {
		t.Errorf("operator from admin: %v", err)
	}
	if _, _, err := s.CreateKey(ctx, a, ten.ID, controlplane.KeySpec{Name: "x", Scopes: tenancy.ScopeRead, Archetypes: []string{"poet"}}); !errors.Is(err, controlplane.ErrForbidden) {
		t.Errorf("archetype escalation: %v", err)
	}
	// Another tenant is not found; a read-only tenant is read-only.
	if _, _, err := s.CreateKey(ctx, a, tenancy.DevTenantPro, controlplane.KeySpec{Name: "x", Scopes: tenancy.ScopeRead}); !errors.Is(err, controlplane.ErrNotFound) {
		t.Errorf("other tenant: %v", err)
	}
	if _, _, err := s.CreateKey(ctx, opsActor(), tenancy.DevTenantPro, controlplane.KeySpec{Name: "x", Scopes: tenancy.ScopeRead}); !errors.Is(err, controlplane.ErrReadOnly) {
		t.Errorf("read-only tenant: %v", err)
	}
	if _, err := s.UpdateTenant(ctx, a, ten.ID, controlplane.TenantPatch{Tier: ptr(tenancy.TierEnterprise)}); !errors.Is(err, controlplane.ErrForbidden) {
		t.Errorf("admin upgrading itself: %v", err)
	}
	reader, rsecret, err := s.CreateKey(ctx, a, ten.ID, controlplane.KeySpec{Name: "reader", Scopes: tenancy.ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	sec.add(rsecret)
	// A reader (no admin) cannot manage keys.
	rid, _ := s.Authenticate(rsecret)
	if _, _, err := s.CreateKey(ctx, controlplane.ActorFrom(rid), ten.ID, controlplane.KeySpec{Name: "y", Scopes: tenancy.ScopeRead}); !errors.Is(err, controlplane.ErrForbidden) {
		t.Errorf("reader creating a key: %v", err)
	}
	// Other tenant's key id is not found.
	if _, err := s.RevokeKey(ctx, opsActor(), tenancy.DevTenantEnterprise, reader.ID); !errors.Is(err, controlplane.ErrReadOnly) {
		t.Errorf("revoke in read-only tenant: %v", err)
	}
	// Rotate: both work during the grace; the old one stops after it.
	nk, nsecret, err := s.RotateKey(ctx, a, ten.ID, reader.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sec.add(nsecret)
	if _, err := s.Authenticate(rsecret); err != nil {
		t.Errorf("old secret in grace: %v", err)
	}
	if _, err := s.Authenticate(nsecret); err != nil || nk.Scopes != tenancy.ScopeRead {
		t.Errorf("new secret: %v %+v", err, nk)
	}
	// Revoke: refused at once.
	if _, err := s.RevokeKey(ctx, a, ten.ID, nk.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(nsecret); !errors.Is(err, tenancy.ErrKeyUnknown) {
		t.Errorf("revoked key: %v", err)
	}
	// Status and tier reach the identity at once.
	if _, err := s.UpdateTenant(ctx, opsActor(), ten.ID, controlplane.TenantPatch{Status: ptr(controlplane.StatusSuspended), Tier: ptr(tenancy.TierFree), Limits: &controlplane.Limits{RequestsPerMinute: ptr(int64(7))}}); err != nil {
		t.Fatal(err)
	}
	id, _ = s.Authenticate(secret)
	if code, _ := id.Inactive(time.Now()); code != "tenant_suspended" || id.Tier != tenancy.TierFree || id.Limits.RequestsPerMinute != 7 || id.Limits.RequestsPerDay != 100 {
		t.Errorf("after update: %+v", id)
	}
	keys, err := s.ListKeys(ctx, ten.ID)
	if err != nil || len(keys) != 3 {
		t.Fatalf("keys %d %v", len(keys), err)
	}
	ro, err := s.GetTenant(ctx, tenancy.DevTenantOps)
	if err != nil || !ro.ReadOnly {
		t.Errorf("dev tenant: %+v %v", ro, err)
	}
	list, total, err := s.ListTenants(ctx, controlplane.TenantFilter{Query: "ACME"}, 0, 10)
	if err != nil || total != 1 || list[0].ID != ten.ID {
		t.Errorf("list q: %d %v", total, err)
	}
	audit, err := s.ListAudit(ctx, ten.ID, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range audit {
		actions = append(actions, e.Action)
	}
	want := []string{"tenant.update", "key.revoke", "key.rotate", "key.create", "key.create", "tenant.create"}
	if !slices.Equal(actions, want) {
		t.Errorf("audit %v, want %v", actions, want)
	}
	if d := audit[0].Detail["tier"]; d.Old != "pro" || d.New != "free" {
		t.Errorf("tier change %+v", d)
	}
	for _, e := range audit {
		for _, v := range sec.all {
			if strings.Contains(fmt.Sprint(e), v[8:]) {
				t.Errorf("secret in audit entry %s", e.Action)
			}
		}
	}
	sec.check(t, logs.String())
}

func ptr[T any](v T) *T { return &v }

func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := memService(t, controlplane.SignupOpen)
	ten, err := s.CreateTenant(ctx, operator, "T", "t@example.com", tenancy.TierFree)
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour)
	cases := []struct {
		name  string
		err   error
		field string
	}{
		{"tenant name", first(s.CreateTenant(ctx, operator, "", "a@example.com", tenancy.TierFree)), "name"},
		{"tenant name long", first(s.CreateTenant(ctx, operator, strings.Repeat("n", 201), "a@example.com", tenancy.TierFree)), "name"},
		{"tenant email", first(s.CreateTenant(ctx, operator, "n", "not-an-email", tenancy.TierFree)), "email"},
		{"tenant email display", first(s.CreateTenant(ctx, operator, "n", "Bob <b@example.com>", tenancy.TierFree)), "email"},
		{"tenant tier", first(s.CreateTenant(ctx, operator, "n", "a@example.com", "gold")), "tier"},
		{"patch id", first(s.UpdateTenant(ctx, operator, "nope", controlplane.TenantPatch{})), "id"},
		{"patch status", first(s.UpdateTenant(ctx, operator, ten.ID, controlplane.TenantPatch{Status: ptr(controlplane.Status("gone"))})), "status"},
		{"patch limits", first(s.UpdateTenant(ctx, operator, ten.ID, controlplane.TenantPatch{Limits: &controlplane.Limits{RequestsPerDay: ptr(int64(-1))}})), "limits.requests_per_day"},
		{"patch email", first(s.UpdateTenant(ctx, operator, ten.ID, controlplane.TenantPatch{Email: ptr("x")})), "email"},
		{"key name", second(s.CreateKey(ctx, operator, ten.ID, controlplane.KeySpec{Scopes: tenancy.ScopeRead})), "name"},
		{"key scopes", second(s.CreateKey(ctx, operator, ten.ID, controlplane.KeySpec{Name: "k"})), "scopes"},
		{"key archetypes", second(s.CreateKey(ctx, operator, ten.ID, controlplane.KeySpec{Name: "k", Scopes: 1, Archetypes: []string{"Bad Name!"}})), "archetypes"},
		{"key expiry", second(s.CreateKey(ctx, operator, ten.ID, controlplane.KeySpec{Name: "k", Scopes: 1, ExpiresAt: &past})), "expires_at"},
		{"rotate grace", second(s.RotateKey(ctx, operator, ten.ID, "key_x", 8*24*time.Hour)), "grace_seconds"},
		{"invite tier", first(s.CreateInvite(ctx, operator, "gold", 0)), "tier"},
		{"invite ttl", first(s.CreateInvite(ctx, operator, "", -time.Second)), "expires_in"},
		{"list limit", third(s.ListTenants(ctx, controlplane.TenantFilter{}, 0, 101)), "limit"},
		{"audit tenant", first(s.ListAudit(ctx, "x", time.Time{}, 10)), "tenant_id"},
		{"signup email", fourth(s.Signup(ctx, "bad", "n", "", "1.2.3.4")), "email"},
		{"signup invite", fourth(s.Signup(ctx, "ok@example.com", "n", "inv_unknown", "1.2.3.5")), "invite_code"},
	}
	for _, c := range cases {
		if !errors.Is(c.err, controlplane.ErrInvalid) || !strings.Contains(c.err.Error(), c.field+":") {
			t.Errorf("%s: %v (want ErrInvalid naming %s)", c.name, c.err, c.field)
		}
	}
	if _, total, _ := s.ListTenants(ctx, controlplane.TenantFilter{}, 0, 100); total != 5 {
		t.Errorf("bad input wrote something: %d tenants", total)
	}
}

func first[A any](_ A, err error) error                  { return err }
func second[A, B any](_ A, _ B, err error) error         { return err }
func third[A, B any](_ A, _ B, err error) error          { return err }
func fourth[A, B, C any](_ A, _ B, _ C, err error) error { return err }

func TestSignupModesMemory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	off, _ := memService(t, controlplane.SignupOff)
	if _, _, _, err := off.Signup(ctx, "a@example.com", "A", "", "1.1.1.1"); !errors.Is(err, controlplane.ErrSignupOff) {
		t.Errorf("off: %v", err)
	}
	inv, _ := memService(t, controlplane.SignupInvite)
	if _, _, _, err := inv.Signup(ctx, "a@example.com", "A", "", "1.1.1.1"); !errors.Is(err, controlplane.ErrInvalid) {
		t.Errorf("invite without code: %v", err)
	}
	code, err := inv.CreateInvite(ctx, opsActor(), tenancy.TierPro, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ten, key, secret, err := inv.Signup(ctx, "a@example.com", "A", code.Code, "1.1.1.1")
	if err != nil || ten.Tier != tenancy.TierPro || key.Scopes != tenancy.ScopeRead|tenancy.ScopeWrite|tenancy.ScopeAdmin {
		t.Fatalf("invite sign-up: %+v %+v %v", ten, key, err)
	}
	if _, err := inv.Authenticate(secret); err != nil {
		t.Error(err)
	}
	if _, _, _, err := inv.Signup(ctx, "b@example.com", "B", code.Code, "1.1.1.2"); !errors.Is(err, controlplane.ErrInvalid) {
		t.Errorf("used invite: %v", err)
	}
	open, _ := memService(t, controlplane.SignupOpen)
	for i := range 3 {
		if _, _, _, err := open.Signup(ctx, fmt.Sprintf("u%d@example.com", i), "U", "", "9.9.9.9"); err != nil {
			t.Fatal(err)
		}
	}
	var rl *controlplane.RateLimitedError
	if _, _, _, err := open.Signup(ctx, "u9@example.com", "U", "", "9.9.9.9"); !errors.As(err, &rl) || rl.RetryAfterSeconds() < 1 {
		t.Errorf("rate limit: %v", err)
	}
	if _, _, _, err := open.Signup(ctx, "u0@EXAMPLE.com", "U", "", "8.8.8.8"); !errors.Is(err, controlplane.ErrExists) {
		t.Errorf("email taken: %v", err)
	}
	if a, _ := open.ListAudit(ctx, "", time.Time{}, 100); len(a) != 3 || a[0].Action != "signup" {
		t.Errorf("audit: %d", len(a))
	}
}

// replica is one Service on a shared NATS server.
type replica struct {
	*controlplane.Service
	stop func()
}

func jsReplica(t testing.TB, srv *natstest.Server, logs *syncBuf, mode controlplane.SignupMode) *replica {
	t.Helper()
	return jsReplicaAt(t, srv.URL(), logs, mode)
}

// jsReplicaAt is a replica connected to NATS at url (a natstest.Proxy's, to
// cut this replica alone off), reconnecting forever as kgentsd does.
func jsReplicaAt(t testing.TB, url string, logs *syncBuf, mode controlplane.SignupMode) *replica {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := tenancy.NewKeyring(tenancy.KeyringOptions{DevKeys: true})
	if err != nil {
		t.Fatal(err)
	}
	s := controlplane.NewJetStream(js, 1, nc.IsConnected, controlplane.Options{Keyring: kr, Signup: mode, SignupRate: 1000,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	nc.SetReconnectHandler(func(*nats.Conn) { s.Reconnected() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	r := &replica{Service: s, stop: func() { cancel(); <-done }}
	t.Cleanup(r.stop)
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := s.WaitSynced(wctx); err != nil {
		t.Fatal("cache never synced")
	}
	return r
}

// waitFor polls cond every millisecond up to 2 s (the SPEC bound) and
// returns how long it took.
func waitFor(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 2*time.Second {
			t.Fatalf("%s: not seen within 2 s", what)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

func TestTwoReplicasPropagation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := natstest.Start(t)
	logs := &syncBuf{}
	var sec secrets
	a := jsReplica(t, srv, logs, controlplane.SignupOpen)
	b := jsReplica(t, srv, logs, controlplane.SignupOpen)
	ten, err := a.CreateTenant(ctx, opsActor(), "Two", "two@example.com", tenancy.TierPro)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tenant on B", func() bool { _, err := b.GetTenant(ctx, ten.ID); return err == nil })
	// Revocations: p50/p99 of revoke on A → refused on B, timed from
	// before A's call to B's first refusal.
	const n = 100
	var lat []time.Duration
	for i := range n {
		k, secret, err := a.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: fmt.Sprintf("k%d", i), Scopes: tenancy.ScopeRead})
		if err != nil {
			t.Fatal(err)
		}
		sec.add(secret)
		waitFor(t, "key on B", func() bool { _, err := b.Authenticate(secret); return err == nil })
		start := time.Now()
		if _, err := a.RevokeKey(ctx, opsActor(), ten.ID, k.ID); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "revoke on B", func() bool { _, err := b.Authenticate(secret); return err != nil })
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	p50, p99 := lat[n/2], lat[n*99/100-1]
	t.Logf("revoke on A → refused on B over %d revocations: p50 %v, p99 %v, max %v", n, p50, p99, lat[n-1])
	if p99 >= 2*time.Second {
		t.Errorf("p99 propagation %v ≥ 2 s", p99)
	}
	// Rotation: old and new work on B; the grace end is honoured there.
	k, secret, err := a.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: "rot", Scopes: tenancy.ScopeRead | tenancy.ScopeAdmin})
	if err != nil {
		t.Fatal(err)
	}
	sec.add(secret)
	waitFor(t, "key on B", func() bool { _, err := b.Authenticate(secret); return err == nil })
	const grace = time.Second
	start := time.Now()
	_, nsecret, err := a.RotateKey(ctx, opsActor(), ten.ID, k.ID, grace)
	if err != nil {
		t.Fatal(err)
	}
	sec.add(nsecret)
	waitFor(t, "rotated key on B", func() bool { _, err := b.Authenticate(nsecret); return err == nil })
	t.Logf("rotate on A → new key on B: %v", time.Since(start))
	if _, err := b.Authenticate(secret); err != nil && time.Since(start) < grace {
		t.Errorf("old key during the grace on B: %v", err)
	}
	// The old secret stops on B when the grace ends, not before.
	var expiredAt time.Duration
	for {
		_, err := b.Authenticate(secret)
		if err != nil {
			expiredAt = time.Since(start)
			if !errors.Is(err, tenancy.ErrKeyExpired) {
				t.Errorf("old key after the grace on B: %v, want ErrKeyExpired", err)
			}
			break
		}
		if time.Since(start) > grace+2*time.Second {
			t.Fatal("the old key still works on B 2 s after its grace")
		}
		time.Sleep(time.Millisecond)
	}
	if expiredAt < grace-10*time.Millisecond { // the grace ends at A's clock's now+grace, a moment after start
		t.Errorf("old key refused on B after %v, before its %v grace ended", expiredAt, grace)
	}
	// Tier and status on A apply on B, timed from before A's call.
	start = time.Now()
	if _, err := a.UpdateTenant(ctx, opsActor(), ten.ID, controlplane.TenantPatch{Tier: ptr(tenancy.TierFree)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "downgrade on B", func() bool {
		id, _ := b.Authenticate(nsecret)
		return id != nil && id.Tier == tenancy.TierFree && id.Limits.RequestsPerMinute == 60
	})
	t.Logf("tier on A → B: %v", time.Since(start))
	start = time.Now()
	if _, err := a.UpdateTenant(ctx, opsActor(), ten.ID, controlplane.TenantPatch{Status: ptr(controlplane.StatusCanceled)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cancel on B", func() bool {
		id, _ := b.Authenticate(nsecret)
		c, _ := id.Inactive(time.Now())
		return c == "tenant_canceled"
	})
	t.Logf("status on A → B: %v", time.Since(start))
	// Audit from B sees A's entries, newest first, with paging.
	page, err := b.ListAudit(ctx, ten.ID, time.Time{}, 5)
	if err != nil || len(page) != 5 || page[0].Action != "tenant.update" {
		t.Fatalf("audit page %d %v", len(page), err)
	}
	older, err := b.ListAudit(ctx, ten.ID, page[4].Time, 100)
	if err != nil || len(older) == 0 || !older[0].Time.Before(page[4].Time) {
		t.Fatalf("older page %d %v", len(older), err)
	}
	if got := srv.Consumers(); got != 2*2 { // the two watches of each replica, nothing left by reads
		t.Errorf("consumers on the server: %d, want 4 (watches only)", got)
	}
	sec.check(t, logs.String())
}

func TestSignupRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := natstest.Start(t)
	logs := &syncBuf{}
	a := jsReplica(t, srv, logs, controlplane.SignupOpen)
	b := jsReplica(t, srv, logs, controlplane.SignupOpen)
	for round := range 10 {
		email := fmt.Sprintf("Race%d@example.com", round)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, r := range []*replica{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e := email
				if i == 1 {
					e = strings.ToLower(email)
				}
				_, _, _, errs[i] = r.Signup(ctx, e, "R", "", fmt.Sprintf("10.0.0.%d", i))
			}()
		}
		wg.Wait()
		ok, exists := 0, 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, controlplane.ErrExists):
				exists++
			default:
				t.Errorf("round %d: %v", round, err)
			}
		}
		if ok != 1 || exists != 1 {
			t.Errorf("round %d: %d successes, %d ErrExists", round, ok, exists)
		}
	}
	// Invite codes are single-use across replicas too.
	inv := jsReplica(t, srv, logs, controlplane.SignupInvite)
	inv2 := jsReplica(t, srv, logs, controlplane.SignupInvite)
	code, err := inv.CreateInvite(ctx, opsActor(), tenancy.TierFree, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, r := range []*replica{inv, inv2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _, errs[i] = r.Signup(ctx, fmt.Sprintf("inv%d@example.com", i), "I", code.Code, "10.1.0.1")
		}()
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Errorf("one invite, two sign-ups: %v / %v", errs[0], errs[1])
	}
}

// B really loses NATS (its connection is cut, and NATS itself restarts
// meanwhile) while A, still connected, makes changes: B keeps serving the
// last known state and says so, refuses writes, and once it reconnects its
// watches resume from the last revision seen and apply what it missed.
func TestWatchRecoversAfterNATSRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := natstest.Start(t)
	proxy := natstest.StartProxy(t)
	backend := strings.TrimPrefix(srv.URL(), "nats://")
	proxy.Route(backend, "")
	logs := &syncBuf{}
	a := jsReplica(t, srv, logs, controlplane.SignupOpen)
	b := jsReplicaAt(t, proxy.URL(), logs, controlplane.SignupOpen)
	ten, err := a.CreateTenant(ctx, opsActor(), "R", "r@example.com", tenancy.TierPro)
	if err != nil {
		t.Fatal(err)
	}
	k, secret, err := a.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: "k", Scopes: tenancy.ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "key on B", func() bool { _, err := b.Authenticate(secret); return err == nil })
	if h := b.Health(); h.Status != "ok" {
		t.Fatalf("B's health before the outage: %+v", h)
	}

	// B loses NATS, and NATS restarts while B is away.
	proxy.Route("", "")
	waitFor(t, "B to notice", func() bool { return b.Health().Status == "stale" })
	srv.Restart()
	if _, err := b.Authenticate(secret); err != nil {
		t.Errorf("B, NATS away: the last known state is not served: %v", err)
	}
	if _, _, err := b.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: "x", Scopes: tenancy.ScopeRead}); !errors.Is(err, controlplane.ErrUnavailable) {
		t.Errorf("B, NATS away: a write answered %v, want ErrUnavailable", err)
	}
	// A, reconnected to the restarted server, revokes the key and suspends the tenant.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := a.RevokeKey(ctx, opsActor(), ten.ID, k.ID)
		if err == nil {
			break
		}
		if !errors.Is(err, controlplane.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("revoke after restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, s2, err := a.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: "k2", Scopes: tenancy.ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateTenant(ctx, opsActor(), ten.ID, controlplane.TenantPatch{Tier: ptr(tenancy.TierFree)}); err != nil {
		t.Fatal(err)
	}
	// B has not seen any of it: still the last known state.
	if id, err := b.Authenticate(secret); err != nil || id.Tier != tenancy.TierPro {
		t.Errorf("B, still away, changed: %+v %v", id, err)
	}
	// B's connection comes back: its watches resume and apply what it missed.
	start := time.Now()
	proxy.Route(backend, "")
	for {
		_, errOld := b.Authenticate(secret)
		id, errNew := b.Authenticate(s2)
		if errOld != nil && errNew == nil && id.Tier == tenancy.TierFree {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("B after reconnecting: the revoked key %v, the new key %v %+v", errOld, errNew, id)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("B applied the outage's changes %v after its connection came back", time.Since(start))
	waitFor(t, "B's health back to ok", func() bool { return b.Health().Status == "ok" })
	// And A, which stayed running through the restart, still follows B.
	_, s3, err := b.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: "k3", Scopes: tenancy.ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B's key on A after the restart", func() bool { _, err := a.Authenticate(s3); return err == nil })
	// Restart persistence: a fresh replica loads everything.
	c := jsReplica(t, srv, logs, controlplane.SignupOpen)
	if _, err := c.Authenticate(s3); err != nil {
		t.Errorf("fresh replica: %v", err)
	}
	if _, err := c.Authenticate(secret); err == nil {
		t.Error("fresh replica accepts a revoked key")
	}
}

// With a real audit stream that refuses appends (full, discard-new), no
// write of the control plane changes anything in the buckets; once the
// stream takes entries again, the same writes work.
func TestRefusedAuditAppendChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := natstest.Start(t)
	logs := &syncBuf{}
	a := jsReplica(t, srv, logs, controlplane.SignupOpen)
	ten, err := a.CreateTenant(ctx, opsActor(), "Full", "full@example.com", tenancy.TierPro)
	if err != nil {
		t.Fatal(err)
	}
	k, secret, err := a.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: "k", Scopes: tenancy.ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	_, js := srv.Connect(t)
	stream, err := js.Stream(ctx, controlplane.AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	full := info.Config
	full.MaxMsgs, full.Discard = int64(info.State.Msgs), jetstream.DiscardNew
	if _, err := js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	// dump is every live value of every control-plane bucket.
	dump := func() map[string]string {
		out := map[string]string{}
		for _, b := range []string{controlplane.TenantsBucket, controlplane.KeysBucket, controlplane.EmailsBucket, controlplane.InvitesBucket} {
			kv, err := js.KeyValue(ctx, b)
			if errors.Is(err, jetstream.ErrBucketNotFound) {
				continue // not used yet
			}
			if err != nil {
				t.Fatal(err)
			}
			lister, err := kv.ListKeys(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for key := range lister.Keys() {
				e, err := kv.Get(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				out[b+"/"+key] = fmt.Sprintf("%d:%s", e.Revision(), e.Value())
			}
		}
		return out
	}
	before := dump()
	suspended := controlplane.StatusSuspended
	writes := []struct {
		name string
		call func() error
	}{
		{"CreateTenant", func() error {
			_, err := a.CreateTenant(ctx, opsActor(), "B", "b@example.com", tenancy.TierFree)
			return err
		}},
		{"UpdateTenant", func() error {
			_, err := a.UpdateTenant(ctx, opsActor(), ten.ID, controlplane.TenantPatch{Status: &suspended})
			return err
		}},
		{"CreateKey", func() error {
			_, _, err := a.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: "k2", Scopes: tenancy.ScopeRead})
			return err
		}},
		{"RotateKey", func() error { _, _, err := a.RotateKey(ctx, opsActor(), ten.ID, k.ID, time.Minute); return err }},
		{"RevokeKey", func() error { _, err := a.RevokeKey(ctx, opsActor(), ten.ID, k.ID); return err }},
		{"CreateInvite", func() error { _, err := a.CreateInvite(ctx, opsActor(), tenancy.TierFree, 0); return err }},
		{"Signup", func() error { _, _, _, err := a.Signup(ctx, "s@example.com", "S", "", "1.2.3.4"); return err }},
		{"UpdateBilling", func() error {
			_, _, err := a.UpdateBilling(ctx, controlplane.SystemActor("stripe"), ten.ID, "billing.subscription", controlplane.BillingPatch{Tier: ptr(tenancy.TierEnterprise)}, nil)
			return err
		}},
	}
	for _, w := range writes {
		if err := w.call(); !errors.Is(err, controlplane.ErrUnavailable) {
			t.Errorf("%s with the audit stream full: %v, want ErrUnavailable", w.name, err)
		}
	}
	if after := dump(); !maps.Equal(before, after) {
		t.Errorf("the buckets changed while the audit stream refused entries:\nbefore %v\nafter  %v", before, after)
	}
	if id, err := a.Authenticate(secret); err != nil || id.TenantStatus == controlplane.StatusSuspended {
		t.Errorf("the key after refused writes: %+v %v", id, err)
	}
	// The stream takes entries again: the writes are made, each audited.
	full.MaxMsgs, full.Discard = -1, jetstream.DiscardOld
	if _, err := js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	for _, w := range writes {
		if err := w.call(); err != nil {
			t.Errorf("%s once the stream takes entries: %v", w.name, err)
		}
	}
	if _, err := a.Authenticate(secret); err == nil {
		t.Error("the revoked key still authenticates")
	}
	entries, err := a.ListAudit(ctx, "", time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(entries); n != 2+len(writes) {
		t.Errorf("%d audit entries, want %d (2 before, one per write after)", n, 2+len(writes))
	}
}

// The audit log pages completely and in O(page) however long it is: a
// tenant whose entries are more than 20,000 entries old is listed in one
// call, every entry of the log is reached by following the before cursor,
// and a cursor deep in the log starts the page right there.
func TestAuditPagingDeepLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := natstest.Start(t)
	logs := &syncBuf{}
	a := jsReplica(t, srv, logs, controlplane.SignupOpen)
	rare, err := a.CreateTenant(ctx, opsActor(), "Rare", "rare@example.com", tenancy.TierFree)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.CreateKey(ctx, opsActor(), rare.ID, controlplane.KeySpec{Name: "k", Scopes: tenancy.ScopeRead}); err != nil {
		t.Fatal(err)
	}
	// Bulk: 17,000 entries of a busy tenant after them (more than the
	// 64×256 sequences the old scan gave up after).
	const bulk = 17_000
	busy := "7d0b8c1e-0000-4000-8000-00000000b05e"
	_, js := srv.Connect(t)
	var futures []jetstream.PubAckFuture
	for i := range bulk {
		e := controlplane.AuditEntry{ID: fmt.Sprintf("aud_bulk_%05d", i), Time: time.Now(), Actor: "system", TenantID: busy,
			Action: "tenant.update", Detail: map[string]controlplane.Change{"n": {New: i}}}
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		f, err := js.PublishAsync("kgent.audit."+busy, b)
		for errors.Is(err, jetstream.ErrTooManyStalledMsgs) { // let the acks catch up
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(60 * time.Second):
				t.Fatal("bulk append stalled")
			}
			f, err = js.PublishAsync("kgent.audit."+busy, b)
		}
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		t.Fatal("bulk append did not complete")
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		}
	}

	// The rare tenant's entries, behind 20,000 others, in one call.
	start := time.Now()
	got, err := a.ListAudit(ctx, rare.ID, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a tenant's 2 entries behind %d others: %v", bulk, time.Since(start))
	if len(got) != 2 || got[0].Action != "key.create" || got[1].Action != "tenant.create" {
		t.Fatalf("rare tenant's entries: %d %v", len(got), actionsOf(got))
	}

	// Every entry of the log, page by page, newest first, each once.
	seen := map[string]bool{}
	var before time.Time
	pages := 0
	start = time.Now()
	var prev time.Time
	for {
		page, err := a.ListAudit(ctx, "", before, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		pages++
		for _, e := range page {
			if seen[e.ID] {
				t.Fatalf("entry %s listed twice", e.ID)
			}
			seen[e.ID] = true
			if !prev.IsZero() && !e.Time.Before(prev) {
				t.Fatalf("entry %s at %v is not older than the one before it (%v)", e.ID, e.Time, prev)
			}
			prev = e.Time
		}
		before = page[len(page)-1].Time
	}
	t.Logf("%d entries in %d pages of 100: %v", len(seen), pages, time.Since(start))
	if len(seen) != bulk+2 {
		t.Errorf("paging reached %d entries, want %d", len(seen), bulk+2)
	}
	if oldest, err := a.ListAudit(ctx, "", prev.Add(time.Nanosecond), 1); err != nil || len(oldest) != 1 || oldest[0].Action != "tenant.create" {
		t.Errorf("the oldest entry: %v %v, want the first tenant.create", actionsOf(oldest), err)
	}

	// A cursor deep in the log starts the page right below it, for every
	// tenant and for the busy one alone.
	deep, err := a.ListAudit(ctx, busy, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(deep) != 100 || deep[0].ID != fmt.Sprintf("aud_bulk_%05d", bulk-1) {
		t.Fatalf("busy tenant's newest page: %d entries, first %s", len(deep), deep[0].ID)
	}
	cursor := deep[99] // bulk entry bulk-100
	for _, tenant := range []string{"", busy} {
		page, err := a.ListAudit(ctx, tenant, cursor.Time, 3)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range page {
			ids = append(ids, e.ID)
		}
		want := []string{fmt.Sprintf("aud_bulk_%05d", bulk-101), fmt.Sprintf("aud_bulk_%05d", bulk-102), fmt.Sprintf("aud_bulk_%05d", bulk-103)}
		if !slices.Equal(ids, want) {
			t.Errorf("tenant %q: the page before %s is %v, want %v", tenant, cursor.ID, ids, want)
		}
	}
	if got := srv.Consumers(); got != 2 {
		t.Errorf("consumers on the server: %d, want 2 (the watches; reads leave none)", got)
	}
}

func actionsOf(es []*controlplane.AuditEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Action)
	}
	return out
}

// Rotating a key mints one with the same scopes and archetypes, so the
// caller must hold all of them: an admin key cannot rotate a key with
// operator scope or an archetype it lacks (ErrForbidden), and the refused
// rotation changes nothing.
func TestRotateNoEscalation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := memService(t, controlplane.SignupOff)
	ten, err := s.CreateTenant(ctx, opsActor(), "Esc", "esc@example.com", tenancy.TierPro)
	if err != nil {
		t.Fatal(err)
	}
	_, adminSecret, err := s.CreateKey(ctx, opsActor(), ten.ID, controlplane.KeySpec{Name: "admin", Scopes: tenancy.ScopeRead | tenancy.ScopeWrite | tenancy.ScopeAdmin, Archetypes: []string{"developer"}})
	if err != nil {
		t.Fatal(err)
	}
	adminID, err := s.Authenticate(adminSecret)
	if err != nil {
		t.Fatal(err)
	}
	admin := controlplane.ActorFrom(adminID)
	cases := []struct {
		name string
		spec controlplane.KeySpec
		want string
	}{
		{"operator scope", controlplane.KeySpec{Name: "ops", Scopes: tenancy.ScopeRead | tenancy.ScopeOperator}, "operator"},
		{"archetype", controlplane.KeySpec{Name: "poet", Scopes: tenancy.ScopeRead, Archetypes: []string{"poet"}}, "poet"},
	}
	for _, c := range cases {
		k, secret, err := s.CreateKey(ctx, operator, ten.ID, c.spec)
		if err != nil {
			t.Fatal(err)
		}
		keysBefore, _ := s.ListKeys(ctx, ten.ID)
		auditBefore, _ := s.ListAudit(ctx, ten.ID, time.Time{}, 100)
		_, _, err = s.RotateKey(ctx, admin, ten.ID, k.ID, time.Minute)
		if !errors.Is(err, controlplane.ErrForbidden) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: rotation by an admin key: %v, want ErrForbidden naming %s", c.name, err, c.want)
		}
		keysAfter, _ := s.ListKeys(ctx, ten.ID)
		auditAfter, _ := s.ListAudit(ctx, ten.ID, time.Time{}, 100)
		if len(keysAfter) != len(keysBefore) || len(auditAfter) != len(auditBefore) {
			t.Errorf("%s: the refused rotation changed something: keys %d→%d, audit %d→%d", c.name, len(keysBefore), len(keysAfter), len(auditBefore), len(auditAfter))
		}
		if id, err := s.Authenticate(secret); err != nil || !id.GraceUntil.IsZero() {
			t.Errorf("%s: the key after a refused rotation: %v", c.name, err)
		}
		for _, kk := range keysAfter {
			if kk.ID == k.ID && kk.ExpiresAt != nil {
				t.Errorf("%s: the refused rotation set an expiry", c.name)
			}
		}
		// An actor holding them may.
		if _, _, err := s.RotateKey(ctx, operator, ten.ID, k.ID, time.Minute); err != nil {
			t.Errorf("%s: rotation by the operator: %v", c.name, err)
		}
	}
}
