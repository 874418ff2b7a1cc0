package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/kgents/kgents-go/tenancy"
)

// natsLink stands in for the connection to NATS in the fault-injection
// tests below: once dropped, every audit append and every store write
// fails, as they would with NATS gone. dropAfterAppends drops it right
// after that many more successful appends: "NATS drops between the audit
// entry and the change".
type natsLink struct {
	mu               sync.Mutex
	down             bool
	auditDown        bool   // the audit stream alone refuses appends (e.g. full)
	storeWrites      int    // store writes attempted
	dropAfterAppends int    // <0: never
	onAppend         func() // run once after the next successful append
}

var errDropped = fmt.Errorf("%w: connection lost", ErrUnavailable)

func (l *natsLink) write() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.storeWrites++
	return !l.down
}

func (l *natsLink) writes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.storeWrites
}

// appended counts a successful append and drops the link when due.
func (l *natsLink) appended() {
	l.mu.Lock()
	f := l.onAppend
	l.onAppend = nil
	if l.dropAfterAppends > 0 {
		l.dropAfterAppends--
		if l.dropAfterAppends == 0 {
			l.down = true
		}
	}
	l.mu.Unlock()
	if f != nil {
		f()
	}
}

type linkedAudit struct {
	auditLog
	l *natsLink
}

func (a linkedAudit) Append(ctx context.Context, e *AuditEntry) error {
	a.l.mu.Lock()
	down := a.l.down || a.l.auditDown
	a.l.mu.Unlock()
	if down {
		return errDropped
	}
	if err := a.auditLog.Append(ctx, e); err != nil {
		return err
	}
	a.l.appended()
	return nil
}

type linkedBucket struct {
	bucket
	l *natsLink
}

func (b linkedBucket) Create(ctx context.Context, key string, val []byte) (uint64, error) {
	if !b.l.write() {
		return 0, errDropped
	}
	return b.bucket.Create(ctx, key, val)
}

func (b linkedBucket) Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	if !b.l.write() {
		return 0, errDropped
	}
	return b.bucket.Update(ctx, key, val, rev)
}

func (b linkedBucket) Delete(ctx context.Context, key string, rev uint64) error {
	if !b.l.write() {
		return errDropped
	}
	return b.bucket.Delete(ctx, key, rev)
}

// linkedService is a memory Service whose audit log and buckets go through l.
func linkedService(t *testing.T, mode SignupMode) (*Service, *natsLink, *memAudit) {
	t.Helper()
	s := NewMemory(Options{Signup: mode, SignupRate: 1000, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	l := &natsLink{dropAfterAppends: -1}
	mem := s.audit.(*memAudit)
	s.audit = linkedAudit{auditLog: mem, l: l}
	s.tenants = linkedBucket{s.tenants, l}
	s.keys = linkedBucket{s.keys, l}
	s.emails = linkedBucket{s.emails, l}
	s.invites = linkedBucket{s.invites, l}
	return s, l, mem
}

// storedState is every live value of every bucket.
func storedState(s *Service) map[string]map[string]string {
	out := map[string]map[string]string{}
	for name, b := range map[string]bucket{"tenants": s.tenants, "keys": s.keys, "emails": s.emails, "invites": s.invites} {
		mb := b.(linkedBucket).bucket.(*memBucket)
		mb.mu.Lock()
		m := map[string]string{}
		for k, e := range mb.cur {
			if !e.deleted {
				m[k] = string(e.value)
			}
		}
		mb.mu.Unlock()
		out[name] = m
	}
	return out
}

func sameState(a, b map[string]map[string]string) bool {
	for name := range a {
		if !maps.Equal(a[name], b[name]) {
			return false
		}
	}
	return len(a) == len(b)
}

func (m *memAudit) all() []*AuditEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*AuditEntry(nil), m.entries...)
}

// A change whose audit entry cannot be written is not made, for every
// kind of write; and if NATS drops after the entry is written but before
// the change is, the change is not made either (the entry is followed by a
// change.aborted entry when that one can still be written, and otherwise
// stands alone while the record's audit_id shows it never took effect).
func TestNoChangeWithoutItsAuditEntry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, link, mem := linkedService(t, SignupInvite)
	sys := SystemActor("system")
	ten, err := s.CreateTenant(ctx, sys, "A", "a@example.com", tenancy.TierPro)
	if err != nil {
		t.Fatal(err)
	}
	k, secret, err := s.CreateKey(ctx, sys, ten.ID, KeySpec{Name: "k", Scopes: tenancy.ScopeRead | tenancy.ScopeAdmin})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := s.CreateInvite(ctx, sys, tenancy.TierPro, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	suspended := StatusSuspended
	writes := []struct {
		name string
		call func() error
	}{
		{"CreateTenant", func() error { _, err := s.CreateTenant(ctx, sys, "B", "b@example.com", tenancy.TierFree); return err }},
		{"UpdateTenant", func() error {
			_, err := s.UpdateTenant(ctx, sys, ten.ID, TenantPatch{Status: &suspended, Email: ptr("new@example.com")})
			return err
		}},
		{"CreateKey", func() error {
			_, _, err := s.CreateKey(ctx, sys, ten.ID, KeySpec{Name: "k2", Scopes: tenancy.ScopeRead})
			return err
		}},
		{"RotateKey", func() error { _, _, err := s.RotateKey(ctx, sys, ten.ID, k.ID, time.Minute); return err }},
		{"RevokeKey", func() error { _, err := s.RevokeKey(ctx, sys, ten.ID, k.ID); return err }},
		{"CreateInvite", func() error { _, err := s.CreateInvite(ctx, sys, tenancy.TierFree, 0); return err }},
		{"Signup", func() error { _, _, _, err := s.Signup(ctx, "s@example.com", "S", inv.Code, "1.2.3.4"); return err }},
		{"UpdateBilling", func() error {
			_, _, err := s.UpdateBilling(ctx, SystemActor("stripe"), ten.ID, "billing.subscription", BillingPatch{Tier: ptr(tenancy.TierEnterprise)}, nil)
			return err
		}},
	}
	cases := []struct {
		name      string
		dropAfter int // appends that succeed before the link drops; 0: the audit stream refuses them all
	}{
		{"audit append fails", 0},
		{"NATS drops between the entry and the change", 1},
	}
	for _, c := range cases {
		for _, w := range writes {
			before := storedState(s)
			entries := len(mem.all())
			link.mu.Lock()
			link.auditDown, link.dropAfterAppends = c.dropAfter == 0, c.dropAfter
			link.mu.Unlock()
			writesBefore := link.writes()
			err := w.call()
			link.mu.Lock()
			link.down, link.auditDown, link.dropAfterAppends = false, false, -1
			link.mu.Unlock()
			if c.dropAfter == 0 && link.writes() != writesBefore {
				t.Errorf("%s, %s: %d store writes before the entry was refused, want none", c.name, w.name, link.writes()-writesBefore)
			}
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("%s, %s: %v, want ErrUnavailable", c.name, w.name, err)
			}
			if after := storedState(s); !sameState(before, after) {
				t.Errorf("%s, %s: the change was made:\nbefore %v\nafter  %v", c.name, w.name, before, after)
			}
			got := mem.all()[entries:]
			switch {
			case c.dropAfter == 0 && len(got) != 0:
				t.Errorf("%s, %s: %d entries appended, want none", c.name, w.name, len(got))
			case c.dropAfter == 1 && len(got) != 1:
				t.Errorf("%s, %s: %d entries appended, want the change's entry alone", c.name, w.name, len(got))
			}
			// The cache agrees with the store: the key still works, unrevoked and unexpired.
			id, err := s.Authenticate(secret)
			if err != nil || id.TenantStatus == StatusSuspended {
				t.Errorf("%s, %s: the cache shows a change: %+v %v", c.name, w.name, id, err)
			}
		}
	}
	// The entries left alone name changes that did not take effect: the
	// tenant's record names an older entry.
	var lone []*AuditEntry
	for _, e := range mem.all() {
		if e.TenantID == ten.ID && e.Action == "tenant.update" {
			lone = append(lone, e)
		}
	}
	tr, _, err := s.loadTenant(ctx, ten.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(lone) != 1 || tr.AuditID == lone[0].ID || tr.AuditID == "" {
		t.Errorf("tenant.update entries %d; record's audit_id %q", len(lone), tr.AuditID)
	}

	// The change fails after its entry, with NATS still there for the
	// abort entry: another replica claims the email between this one's
	// check and its claim. change.aborted names the entry.
	n := len(mem.all())
	link.mu.Lock()
	link.onAppend = func() {
		if _, err := s.emails.Create(ctx, emailKey("race@example.com"), []byte("someone")); err != nil {
			t.Error(err)
		}
	}
	link.mu.Unlock()
	_, err = s.CreateTenant(ctx, sys, "Race", "race@example.com", tenancy.TierFree)
	if !errors.Is(err, ErrExists) {
		t.Fatalf("lost claim: %v", err)
	}
	got := mem.all()[n:]
	if len(got) != 2 || got[0].Action != "tenant.create" || got[1].Action != "change.aborted" || got[1].Detail["entry"].New != got[0].ID {
		t.Errorf("entries after a lost claim: %+v", got)
	}
	if _, total, _ := s.ListTenants(ctx, TenantFilter{Query: "race"}, 0, 10); total != 0 {
		t.Error("the tenant of a lost claim exists")
	}

	// With the link up, every write works and is audited before it is stored.
	for _, w := range writes {
		n := len(mem.all())
		if err := w.call(); err != nil {
			t.Errorf("%s with NATS up: %v", w.name, err)
			continue
		}
		if got := mem.all()[n:]; len(got) == 0 || got[0].Action == "change.aborted" {
			t.Errorf("%s: entries %+v", w.name, got)
		}
	}
	tr, _, _ = s.loadTenant(ctx, ten.ID)
	if last := mem.all(); tr.AuditID == "" || !hasEntry(last, tr.AuditID) {
		t.Errorf("the tenant's audit_id %q names no entry", tr.AuditID)
	}
}

func hasEntry(es []*AuditEntry, id string) bool {
	for _, e := range es {
		if e.ID == id {
			return true
		}
	}
	return false
}
