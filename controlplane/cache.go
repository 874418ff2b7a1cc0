package controlplane

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kgents/kgents-go/tenancy"
)

// The cache is this replica's copy of the tenants and keys buckets, kept
// current by one KV watch per bucket. Authentication reads an immutable
// snapshot through an atomic pointer: no lock, no NATS round trip.

type cachedTenant struct {
	rec *tenantRecord
	rev uint64
}

type cachedKey struct {
	rec  *keyRecord
	hash [32]byte
	rev  uint64
}

// authEntry is one usable key's precomputed identity.
type authEntry struct {
	id      *tenancy.Identity
	expires int64 // unix nanoseconds; 0 never
	used    *usedMark
}

// usedMark is a key's last_used_at state on this replica: pending from the
// use that queues a write until LastUsedEvery after that write, so the
// request path reads one atomic flag and never the clock.
type usedMark struct{ pending atomic.Bool }

type snapshot struct {
	tenants map[string]*cachedTenant
	keys    map[string]*cachedKey
	byHash  map[[32]byte]*authEntry
}

type cache struct {
	tiers tenancy.Tiers

	mu      sync.Mutex // guards the fields below and publishing
	tenants map[string]*cachedTenant
	keys    map[string]*cachedKey
	used    map[string]*usedMark // last_used_at marks by key id, shared by snapshots
	ready   [2]bool              // tenants, keys caught up since the last (re)start
	revs    [2]uint64            // last revision seen per bucket

	snap     atomic.Pointer[snapshot]
	lastSync atomic.Int64 // unix nanoseconds of the last caught-up or applied change
	synced   atomic.Bool  // both watches caught up and running
}

func newCache(tiers tenancy.Tiers) *cache {
	c := &cache{tiers: tiers, tenants: map[string]*cachedTenant{}, keys: map[string]*cachedKey{}, used: map[string]*usedMark{}}
	c.snap.Store(&snapshot{tenants: map[string]*cachedTenant{}, keys: map[string]*cachedKey{}, byHash: map[[32]byte]*authEntry{}})
	return c
}

const (
	bTenants = 0
	bKeys    = 1
)

// apply takes one bucket entry (from the watch, or this replica's own
// write) and publishes a new snapshot if publish. An entry older than what
// the cache holds for its key is ignored.
func (c *cache) apply(which int, e entry, publish bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Own writes are applied ahead of the watch; the watch's position is
	// only moved by the watch itself (watched), so none is skipped.
	changed := false
	switch which {
	case bTenants:
		if old := c.tenants[e.key]; old != nil && old.rev >= e.rev {
			return
		}
		if e.deleted {
			changed = c.tenants[e.key] != nil
			delete(c.tenants, e.key)
		} else if r, err := decode[tenantRecord](e.value); err == nil {
			c.tenants[e.key], changed = &cachedTenant{rec: r, rev: e.rev}, true
		}
	case bKeys:
		if old := c.keys[e.key]; old != nil && old.rev >= e.rev {
			return
		}
		if e.deleted {
			changed = c.keys[e.key] != nil
			delete(c.keys, e.key)
		} else if r, err := decode[keyRecord](e.value); err == nil {
			if h, ok := r.hash(); ok {
				c.keys[e.key], changed = &cachedKey{rec: r, hash: h, rev: e.rev}, true
				if c.used[r.ID] == nil {
					c.used[r.ID] = &usedMark{}
				}
			}
		}
	}
	if changed && publish && c.ready[which] {
		c.publishLocked()
	}
}

// watched records the watch's progress.
func (c *cache) watched(which int, rev uint64) {
	c.mu.Lock()
	c.revs[which] = max(c.revs[which], rev)
	c.mu.Unlock()
	c.lastSync.Store(time.Now().UnixNano())
}

func (c *cache) caughtUp(which int) {
	c.mu.Lock()
	c.ready[which] = true
	both := c.ready[bTenants] && c.ready[bKeys]
	c.publishLocked()
	c.mu.Unlock()
	c.synced.Store(both)
	c.lastSync.Store(time.Now().UnixNano())
}

func (c *cache) lost(which int) {
	c.mu.Lock()
	c.ready[which] = false
	c.mu.Unlock()
	c.synced.Store(false)
}

func (c *cache) from(which int) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.revs[which]
}

// publishLocked builds the snapshot. It is O(keys); changes are rare
// next to authentications.
func (c *cache) publishLocked() {
	s := &snapshot{
		tenants: make(map[string]*cachedTenant, len(c.tenants)),
		keys:    make(map[string]*cachedKey, len(c.keys)),
		byHash:  make(map[[32]byte]*authEntry, len(c.keys)),
	}
	for id, t := range c.tenants {
		s.tenants[id] = t
	}
	idents := map[string]*tenancy.Identity{} // one per tenant, copied per key
	for id, k := range c.keys {
		s.keys[id] = k
		if k.rec.RevokedAt != nil {
			continue
		}
		t := c.tenants[k.rec.TenantID]
		if t == nil {
			continue
		}
		base := idents[t.rec.ID]
		if base == nil {
			base = &tenancy.Identity{
				TenantID:     t.rec.ID,
				Tier:         t.rec.Tier,
				Limits:       limitsFor(c.tiers, t.rec.Tier, t.rec.Limits),
				TenantStatus: t.rec.Status,
			}
			if t.rec.GraceUntil != nil {
				base.GraceUntil = *t.rec.GraceUntil
			}
			idents[t.rec.ID] = base
		}
		id := *base
		id.KeyID, id.KeyPublicID, id.UserID = k.rec.ID, k.rec.ID, k.rec.ID
		id.Scopes = k.rec.scopes()
		id.Archetypes = slices.Clone(k.rec.Archetypes)
		ae := &authEntry{id: &id, used: c.used[k.rec.ID]}
		if k.rec.ExpiresAt != nil {
			ae.expires = k.rec.ExpiresAt.UnixNano()
		}
		s.byHash[k.hash] = ae
	}
	c.snap.Store(s)
}

// watchLoop keeps one bucket's watch running until ctx ends: after a break
// (NATS restart, reconnect) it resumes from the last revision seen, so no
// change is missed; restart (from a reconnect handler) forces that.
func (c *cache) watchLoop(ctx context.Context, which int, b bucket, restart <-chan struct{}, onErr func(error)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			select {
			case <-restart:
				cancel()
			case <-wctx.Done():
			}
		}()
		err := b.Watch(wctx, c.from(which), func(e entry) {
			c.apply(which, e, true)
			c.watched(which, e.rev)
		}, func() { c.caughtUp(which) })
		cancel()
		<-done
		c.lost(which)
		if ctx.Err() != nil {
			return
		}
		if err != nil && onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
		if err == nil || strings.Contains(err.Error(), "context canceled") {
			backoff = 100 * time.Millisecond
		}
	}
}
