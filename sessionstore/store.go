// Package sessionstore keeps K-gent sessions and their transcripts. In
// production sessions live in a JetStream KV bucket (one key per session,
// "<tenant>.<session>", so a tenant's sessions list by key filter and another
// tenant's key simply does not exist) and transcripts in their own JetStream
// stream, retained forever: the transcript is the source of truth. Memory is
// the in-process twin with the same behaviour, for tests and NATS_ENABLED=false.
package sessionstore

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/proto"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
)

// Errors the store reports; services map them to status codes.
var (
	ErrNotFound    = errors.New("session not found")
	ErrExists      = errors.New("session already exists")
	ErrUnavailable = errors.New("session storage is unavailable")
	ErrConflict    = errors.New("session changed concurrently")
)

// Record is a stored session with the bookkeeping the service needs.
type Record struct {
	Session *sessionsv1.Session
	// EventSeq is the id of the session's last event (events are numbered
	// 1, 2, ... per session, across replicas, by whoever holds the turn).
	EventSeq uint64
	// Turn is the turn in flight, nil when idle.
	Turn *Turn
	// Revision is the store's version of this record, for compare-and-set.
	Revision uint64
}

// Turn marks a session busy: one turn in flight per session, on any replica.
type Turn struct {
	ID      string    `json:"id"`
	Started time.Time `json:"started"`
	Replica string    `json:"replica"`
}

// Clone returns a deep copy.
func (r *Record) Clone() *Record {
	c := *r
	c.Session = proto.Clone(r.Session).(*sessionsv1.Session)
	if r.Turn != nil {
		t := *r.Turn
		c.Turn = &t
	}
	return &c
}

// Store keeps sessions and transcripts.
type Store interface {
	// Create stores a new session (ErrExists if its id is taken).
	Create(ctx context.Context, s *sessionsv1.Session) (*Record, error)
	// Get returns a tenant's session, ErrNotFound if the tenant has no such session.
	Get(ctx context.Context, tenantID, sessionID string) (*Record, error)
	// List returns a page of a tenant's sessions, newest first, and the total.
	List(ctx context.Context, tenantID string, offset, limit int) ([]*sessionsv1.Session, int, error)
	// Update applies fn to the current record and stores the result with
	// compare-and-set, re-reading and re-applying fn on a concurrent change.
	// fn may return an error to abort, which Update returns unchanged.
	Update(ctx context.Context, tenantID, sessionID string, fn func(*Record) error) (*Record, error)
	// AppendMessage durably adds a message to its session's transcript
	// (idempotent by message id).
	AppendMessage(ctx context.Context, tenantID string, m *sessionsv1.Message) error
	// Messages returns a page of a transcript, oldest first, and the total.
	Messages(ctx context.Context, tenantID, sessionID string, offset, limit int) ([]*sessionsv1.Message, int, error)
}

// LastMessages returns up to n of a session's newest messages, oldest first.
func LastMessages(ctx context.Context, s Store, tenantID, sessionID string, n int) ([]*sessionsv1.Message, error) {
	_, total, err := s.Messages(ctx, tenantID, sessionID, 0, 0)
	if err != nil || total == 0 {
		return nil, err
	}
	msgs, _, err := s.Messages(ctx, tenantID, sessionID, max(total-n, 0), n)
	return msgs, err
}
