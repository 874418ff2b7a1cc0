package sessionstore

import (
	"context"
	"sync"

	"google.golang.org/protobuf/proto"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
)

// Memory is the in-process Store: the same semantics as JetStream, lost on
// restart, invisible to other replicas.
type Memory struct {
	mu       sync.Mutex
	records  map[string]*Record // key: tenant.session
	messages map[string]map[int]*sessionsv1.Message
	byTenant map[string][]string // session ids in order of creation
}

// NewMemory returns an empty store.
func NewMemory() *Memory {
	return &Memory{
		records:  map[string]*Record{},
		messages: map[string]map[int]*sessionsv1.Message{},
		byTenant: map[string][]string{},
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
	ids := append(m.byTenant[s.GetTenantId()], s.GetId())
	m.byTenant[s.GetTenantId()] = ids
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
	defer m.mu.Unlock()
	ids := m.byTenant[tenantID]
	out := []*sessionsv1.Session{}
	for i := len(ids) - 1 - max(offset, 0); i >= 0 && len(out) < limit; i-- {
		out = append(out, proto.Clone(m.records[key(tenantID, ids[i])].Session).(*sessionsv1.Session))
	}
	return out, len(ids), nil
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

// AppendMessage stores message number n (once).
func (m *Memory) AppendMessage(_ context.Context, tenantID string, n int, msg *sessionsv1.Message) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key(tenantID, msg.GetSessionId())
	if _, ok := m.records[k]; !ok {
		return ErrNotFound
	}
	if m.messages[k] == nil {
		m.messages[k] = map[int]*sessionsv1.Message{}
	}
	if old, ok := m.messages[k][n]; ok {
		if old.GetId() == msg.GetId() {
			return nil
		}
		return ErrConflict
	}
	m.messages[k][n] = proto.Clone(msg).(*sessionsv1.Message)
	return nil
}

// AppendAtEnd stores msg at a number reserved past every other.
func (m *Memory) AppendAtEnd(_ context.Context, tenantID string, msg *sessionsv1.Message) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key(tenantID, msg.GetSessionId())
	r, ok := m.records[k]
	if !ok {
		return 0, ErrNotFound
	}
	n := endPlace(r)
	next := r.Clone()
	next.Session.MessageCount = int32(n + 1)
	next.Revision = r.Revision + 1
	m.records[k] = next
	if m.messages[k] == nil {
		m.messages[k] = map[int]*sessionsv1.Message{}
	}
	m.messages[k][n] = proto.Clone(msg).(*sessionsv1.Message)
	return n, nil
}

// Messages returns messages numbered from..to-1, oldest first.
func (m *Memory) Messages(_ context.Context, tenantID, sessionID string, from, to int) ([]*sessionsv1.Message, error) {
	from, to, err := checkRange(from, to)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key(tenantID, sessionID)
	if _, ok := m.records[k]; !ok {
		return nil, ErrNotFound
	}
	out := []*sessionsv1.Message{}
	for n := from; n < to; n++ {
		if msg, ok := m.messages[k][n]; ok {
			out = append(out, proto.Clone(msg).(*sessionsv1.Message))
		}
	}
	return out, nil
}
