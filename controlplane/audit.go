package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/streaming"
)

// Names of the JetStream resources of the control plane.
const (
	TenantsBucket = "kgent-tenants"
	KeysBucket    = "kgent-keys"
	EmailsBucket  = "kgent-tenant-emails"
	InvitesBucket = "kgent-invites"
	AuditStream   = "kgent-audit"
	auditRoot     = "kgent.audit"
	// AuditMaxAge is how long audit entries are kept.
	AuditMaxAge = 400 * 24 * time.Hour
)

// auditLog appends and reads audit entries.
type auditLog interface {
	Append(ctx context.Context, e *AuditEntry) error
	// List returns entries newest first with Time before before (zero:
	// the newest), of tenantID ("" all), at most limit.
	List(ctx context.Context, tenantID string, before time.Time, limit int) ([]*AuditEntry, error)
}

type memAudit struct {
	mu      sync.Mutex
	entries []*AuditEntry
}

func (m *memAudit) Append(_ context.Context, e *AuditEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries = append(m.entries, e)
	return nil
}

func (m *memAudit) List(_ context.Context, tenantID string, before time.Time, limit int) ([]*AuditEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Entries are in time order (one replica, one clock): start at before.
	i := len(m.entries)
	if !before.IsZero() {
		i = sort.Search(len(m.entries), func(i int) bool { return !m.entries[i].Time.Before(before) })
	}
	out := []*AuditEntry{}
	for i--; i >= 0 && len(out) < limit; i-- {
		if e := m.entries[i]; tenantID == "" || e.TenantID == tenantID {
			out = append(out, e)
		}
	}
	return out, nil
}

// jsAudit is the stream kgent-audit, subject kgent.audit.<tenant>. It is
// read with direct gets only (never a consumer).
type jsAudit struct {
	js        jetstream.JetStream
	replicas  int
	connected func() bool

	mu      sync.Mutex
	ensured bool
}

func (a *jsAudit) ensure(ctx context.Context) error {
	if a.connected != nil && !a.connected() {
		return fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ensured {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := a.js.CreateOrUpdateStream(cctx, jetstream.StreamConfig{
		Name:        AuditStream,
		Description: "kgents control-plane audit log, subject kgent.audit.<tenant>; kept 400 days, never rewritten",
		Subjects:    []string{auditRoot + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    max(a.replicas, 1),
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      AuditMaxAge,
		MaxMsgSize:  64 << 10,
		AllowDirect: true,
		DenyDelete:  true,
		DenyPurge:   true,
		Duplicates:  2 * time.Minute,
	})
	if err != nil {
		return unavailable(ctx, fmt.Errorf("audit stream: %w", err))
	}
	a.ensured = true
	return nil
}

func (a *jsAudit) reset() {
	a.mu.Lock()
	a.ensured = false
	a.mu.Unlock()
}

func auditSubject(tenantID string) string {
	if tenantID == "" {
		tenantID = "_"
	}
	return auditRoot + "." + tenantID
}

func (a *jsAudit) Append(ctx context.Context, e *AuditEntry) error {
	if err := a.ensure(ctx); err != nil {
		return err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	cctx, cancel := opCtx(ctx)
	defer cancel()
	if _, err := a.js.Publish(cctx, auditSubject(e.TenantID), b, jetstream.WithMsgID(e.ID), jetstream.WithExpectStream(AuditStream)); err != nil {
		return unavailable(ctx, fmt.Errorf("audit append: %w", err))
	}
	return nil
}

// List reads a page in O(page): it starts at the before cursor's place in
// the stream (found by the stream's timestamps, not by scanning) and reads
// backwards from there. Every tenant's: the sequences just below the
// cursor, in one batched read (every stored message is an entry). One
// tenant's: one step per entry through that tenant's subject alone, so a
// rarely changed tenant's old entries are as near as its new ones.
//
// An entry's Time is when the log stored it (the stream's timestamp, on the
// NATS server's clock): the order of the log and the cursor agree whatever
// the replicas' clocks say. Entries are appended before their change is
// made, so it is also when the change was made, within the write's latency.
func (a *jsAudit) List(ctx context.Context, tenantID string, before time.Time, limit int) ([]*AuditEntry, error) {
	if err := a.ensure(ctx); err != nil {
		return nil, err
	}
	var out []*AuditEntry
	var err error
	if tenantID == "" {
		out, err = a.listAll(ctx, before, limit)
	} else {
		out, err = a.listSubject(ctx, auditSubject(tenantID), before, limit)
	}
	if errors.Is(err, streaming.ErrNotFound) {
		return []*AuditEntry{}, nil
	}
	if err != nil && !errors.Is(err, errCorrupt) {
		return nil, unavailable(ctx, err)
	}
	return out, err
}

var errCorrupt = errors.New("audit entry is corrupt")

func auditEntryOf(m *jetstream.RawStreamMsg) (*AuditEntry, error) {
	e := &AuditEntry{}
	if err := json.Unmarshal(m.Data, e); err != nil {
		return nil, fmt.Errorf("%w: sequence %d: %w", errCorrupt, m.Sequence, err)
	}
	if !m.Time.IsZero() {
		e.Time = m.Time.UTC()
	}
	return e, nil
}

func (a *jsAudit) listAll(ctx context.Context, before time.Time, limit int) ([]*AuditEntry, error) {
	filter := auditRoot + ".>"
	var hi uint64
	if !before.IsZero() {
		m, err := streaming.FirstAt(ctx, a.js, AuditStream, filter, before)
		switch {
		case err == nil:
			hi = m.Sequence - 1
			if hi == 0 {
				return []*AuditEntry{}, nil
			}
		case !errors.Is(err, streaming.ErrNotFound): // nothing stored at or after before: start at the newest
			return nil, err
		}
	}
	if hi == 0 {
		last, err := streaming.Last(ctx, a.js, AuditStream, filter)
		if err != nil {
			return nil, err
		}
		hi = last.Sequence
	}
	out := make([]*AuditEntry, 0, limit)
	for hi > 0 && len(out) < limit {
		want := uint64(limit - len(out))
		lo := uint64(1)
		if hi > want {
			lo = hi - want + 1
		}
		var win []*AuditEntry
		var bad error
		_, _, err := streaming.ReadFrom(ctx, a.js, AuditStream, filter, lo, int(hi-lo+1), func(m *jetstream.RawStreamMsg) bool {
			if m.Sequence > hi {
				return false
			}
			e, err := auditEntryOf(m)
			if err != nil {
				bad = err
				return false
			}
			win = append(win, e)
			return true
		})
		if err != nil {
			return nil, err
		}
		if bad != nil {
			return nil, bad
		}
		slices.Reverse(win)
		out = append(out, win...)
		if uint64(len(win)) < hi-lo+1 {
			break // the entries below have aged out (MaxAge): the log begins here
		}
		hi = lo - 1
	}
	return out, nil
}

func (a *jsAudit) listSubject(ctx context.Context, subject string, before time.Time, limit int) ([]*AuditEntry, error) {
	out := make([]*AuditEntry, 0, limit)
	var seq uint64
	for len(out) < limit {
		var m *jetstream.RawStreamMsg
		var err error
		if seq == 0 {
			m, err = streaming.LastUpTo(ctx, a.js, AuditStream, subject, 0, before)
		} else {
			m, err = streaming.LastUpTo(ctx, a.js, AuditStream, subject, seq, time.Time{})
		}
		if errors.Is(err, streaming.ErrNotFound) {
			break
		}
		if err != nil {
			return nil, err
		}
		e, err := auditEntryOf(m)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
		if m.Sequence <= 1 {
			break
		}
		seq = m.Sequence - 1
	}
	return out, nil
}
