package agentese

import (
	"container/list"
	"sync"
)

// DefaultMaxTenants is how many tenants' in-memory AGENTESE state (entropy
// pools, memories, traces, ...) a registry keeps; the least recently active
// tenant's state is dropped beyond it.
const DefaultMaxTenants = 1024

// tenantStore holds per-tenant state, bounded in tenants (LRU). The state is
// in memory and per process: it is lost on restart and not shared between
// replicas, which the docs say plainly.
type tenantStore struct {
	mu    sync.Mutex
	max   int
	byID  map[string]*list.Element
	order *list.List // of *tenantState, most recently used at the front
}

func newTenantStore(max int) *tenantStore {
	if max <= 0 {
		max = DefaultMaxTenants
	}
	return &tenantStore{max: max, byID: map[string]*list.Element{}, order: list.New()}
}

// tenantState is one tenant's state: a slot per stateful feature. Each slot
// value carries its own lock and bounds.
type tenantState struct {
	id    string
	mu    sync.Mutex
	slots map[string]any
}

// get returns the tenant's state, creating it (and evicting the least
// recently used tenant when full).
func (s *tenantStore) get(id string) *tenantState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.byID[id]; ok {
		s.order.MoveToFront(e)
		return e.Value.(*tenantState)
	}
	for s.order.Len() >= s.max {
		old := s.order.Back()
		s.order.Remove(old)
		delete(s.byID, old.Value.(*tenantState).id)
	}
	ts := &tenantState{id: id, slots: map[string]any{}}
	s.byID[id] = s.order.PushFront(ts)
	return ts
}

// len is the number of tenants held.
func (s *tenantStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len()
}

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
