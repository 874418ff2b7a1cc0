package agentese

import (
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultMaxTenants is how many tenants' in-memory AGENTESE state (entropy
// pools, memories, traces, ...) a registry keeps; the least recently active
// tenant's state is dropped beyond it.
const DefaultMaxTenants = 1024

// tenantStore holds per-tenant state, bounded in tenants (an LRU,
// hashicorp/golang-lru). The state is in memory and per process: it is lost
// on restart and not shared between replicas, which the docs say plainly.
type tenantStore struct {
	lru *lru.Cache[string, *tenantState]
}

func newTenantStore(max int) *tenantStore {
	if max <= 0 {
		max = DefaultMaxTenants
	}
	c, _ := lru.New[string, *tenantState](max) // max > 0: no error
	return &tenantStore{lru: c}
}

// tenantState is one tenant's state: a slot per stateful feature. Each slot
// value carries its own lock and bounds.
type tenantState struct {
	mu    sync.Mutex
	slots map[string]any
}

// get returns the tenant's state, creating it (and evicting the least
// recently used tenant when full). Two calls racing for a new tenant get
// the same state.
func (s *tenantStore) get(id string) *tenantState {
	if ts, ok := s.lru.Get(id); ok {
		return ts
	}
	ts := &tenantState{slots: map[string]any{}}
	if prev, ok, _ := s.lru.PeekOrAdd(id, ts); ok {
		return prev
	}
	return ts
}

// len is the number of tenants held.
func (s *tenantStore) len() int { return s.lru.Len() }

// slotOf returns the tenant's slot under key, creating it with mk. A key is
// used with one type only (each stateful node owns its key).
func slotOf[T any](ts *tenantState, key string, mk func() *T) *T {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if v, ok := ts.slots[key].(*T); ok {
		return v
	}
	v := mk()
	ts.slots[key] = v
	return v
}

// peekSlot returns the tenant's slot under key without creating it.
func peekSlot[T any](ts *tenantState, key string) *T {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	v, _ := ts.slots[key].(*T)
	return v
}

// clear drops every slot (self.state.reset).
func (ts *tenantState) clear() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	n := len(ts.slots)
	ts.slots = map[string]any{}
	return n
}
