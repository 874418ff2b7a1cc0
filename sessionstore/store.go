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
	"fmt"
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
	// Unindexed marks a session not yet in its tenant's listing: one created
	// while NATS was away, indexed by its first update once NATS is back.
	Unindexed bool
	// Revision is the store's version of this record, for compare-and-set.
	Revision uint64
}

// Turn is the lease of the turn in flight: one turn per session, on any
// replica. The replica running it renews Expires while it runs; once
// Expires has passed the replica is presumed dead and the next send closes
// the turn from what was stored (sessionsvc).
type Turn struct {
	ID      string    `json:"id"`
	Started time.Time `json:"started"`
	Replica string    `json:"replica"`
	// Expires is when the lease lapses unless renewed.
	Expires time.Time `json:"expires"`
	// FirstMessage is the transcript number of the turn's user message (its
	// reply, if stored, is the next number).
	FirstMessage int32 `json:"first_message"`
	// EventCeiling is the highest event id reserved for this turn: its
	// events take ids after the record's EventSeq up to the ceiling, so a
	// turn that dies leaves ids no later turn can reuse.
	EventCeiling uint64 `json:"event_ceiling"`
	// Mode and Budget of the turn (soulv1 enum numbers), to bill what an
	// interrupted turn served.
	Mode   int32 `json:"mode,omitempty"`
	Budget int32 `json:"budget,omitempty"`
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
//
// A transcript is numbered: message n (0, 1, ...) of a session is stored at
// most once, so a page is read by number in O(page), and the session's
// message_count is the number of messages stored before the turn in flight
// (whose messages, if any, are numbers message_count and message_count+1).
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
	// AppendMessage durably stores m as message number n of its session's
	// transcript. Storing the same message again is a no-op; a different
	// message under a number already taken is ErrConflict.
	AppendMessage(ctx context.Context, tenantID string, n int, m *sessionsv1.Message) error
	// AppendAtEnd stores m after every message of its session, at a number
	// reserved on the record by compare-and-set (past message_count and
	// past the two places of a turn in flight), and returns that number:
	// for a reply whose own place a message replayed late has taken.
	AppendAtEnd(ctx context.Context, tenantID string, m *sessionsv1.Message) (int, error)
	// Messages returns the stored messages numbered from..to-1, oldest
	// first (numbers with no message are left out).
	Messages(ctx context.Context, tenantID, sessionID string, from, to int) ([]*sessionsv1.Message, error)
}

// MaxMessagesRead bounds one Messages call (a page is at most 100).
const MaxMessagesRead = 256

// LastMessages returns up to n of a session's newest stored messages
// before message number end, oldest first.
func LastMessages(ctx context.Context, s Store, tenantID, sessionID string, end, n int) ([]*sessionsv1.Message, error) {
	return s.Messages(ctx, tenantID, sessionID, max(end-n, 0), end)
}

// checkRange validates a Messages range.
func checkRange(from, to int) (int, int, error) {
	from = max(from, 0)
	if to-from > MaxMessagesRead {
		return 0, 0, fmt.Errorf("sessionstore: at most %d messages per read", MaxMessagesRead)
	}
	return from, to, nil
}
