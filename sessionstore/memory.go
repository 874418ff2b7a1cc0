package sessionstore

import (
	"context"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
)

// Memory is the in-process Store: the same semantics as JetStream, lost on
// restart, invisible to other replicas.
type Memory struct {
	mu         sync.Mutex
	records    map[string]*Record // key: tenant.session
	messages   map[string][]*sessionsv1.Message
	messageIDs map[string]bool
}

// NewMemory returns an empty store.
func NewMemory() *Memory {
	return &Memory{
		records:    map[string]*Record{},
		messages:   map[string][]*sessionsv1.Message{},
		messageIDs: map[string]bool{},
	}
}

func key(tenantID, sessionID string) string { return tenantID + "." + sessionID }

// Create stores a new session.
func (m *Memory) Create(_ context.Context, s *sessionsv1.Session) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key(s.GetTenantId(), s.GetId())
	if _, ok := m.records[k]; ok {
		return nil, ErrExists
	}
	r := &Record{Session: proto.Clone(s).(*sessionsv1.Session), Revision: 1}
	m.records[k] = r
	return r.Clone(), nil
}

// Get returns a session.
func (m *Memory) Get(_ context.Context, tenantID, sessionID string) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.records[key(tenantID, sessionID)]
	if !ok {
		return nil, ErrNotFound
	}
	return r.Clone(), nil
}

// List returns a page of a tenant's sessions, newest first.
func (m *Memory) List(_ context.Context, tenantID string, offset, limit int) ([]*sessionsv1.Session, int, error) {
	m.mu.Lock()
	var all []*sessionsv1.Session
	for _, r := range m.records {
		if r.Session.GetTenantId() == tenantID {
			all = append(all, proto.Clone(r.Session).(*sessionsv1.Session))
		}
	}
	m.mu.Unlock()
	sortNewestFirst(all)
	return page(all, offset, limit), len(all), nil
}

// Update applies fn with compare-and-set semantics.
func (m *Memory) Update(_ context.Context, tenantID, sessionID string, fn func(*Record) error) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.records[key(tenantID, sessionID)]
	if !ok {
		return nil, ErrNotFound
	}
	next := cur.Clone()
	if err := fn(next); err != nil {
		return nil, err
	}
	next.Revision = cur.Revision + 1
	m.records[key(tenantID, sessionID)] = next
	return next.Clone(), nil
}

// AppendMessage adds a message (once per message id).
func (m *Memory) AppendMessage(_ context.Context, tenantID string, msg *sessionsv1.Message) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.records[key(tenantID, msg.GetSessionId())]; !ok {
		return ErrNotFound
	}
	if m.messageIDs[msg.GetId()] {
		return nil
	}
	m.messageIDs[msg.GetId()] = true
	k := key(tenantID, msg.GetSessionId())
	m.messages[k] = append(m.messages[k], proto.Clone(msg).(*sessionsv1.Message))
	return nil
}

// Messages returns a page of a transcript, oldest first.
func (m *Memory) Messages(_ context.Context, tenantID, sessionID string, offset, limit int) ([]*sessionsv1.Message, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.records[key(tenantID, sessionID)]; !ok {
		return nil, 0, ErrNotFound
	}
	all := m.messages[key(tenantID, sessionID)]
	out := page(all, offset, limit)
	for i, msg := range out {
		out[i] = proto.Clone(msg).(*sessionsv1.Message)
	}
	return out, len(all), nil
}

func sortNewestFirst(s []*sessionsv1.Session) {
	slices.SortStableFunc(s, func(a, b *sessionsv1.Session) int {
		if c := b.GetCreatedAt().AsTime().Compare(a.GetCreatedAt().AsTime()); c != 0 {
			return c
		}
		// Same instant: a stable, arbitrary order.
		switch {
		case a.GetId() > b.GetId():
			return -1
		case a.GetId() < b.GetId():
			return 1
		}
		return 0
	})
}

func page[T any](all []T, offset, limit int) []T {
	if offset >= len(all) || limit <= 0 {
		return []T{}
	}
	end := min(offset+limit, len(all))
	return slices.Clone(all[offset:end])
}
