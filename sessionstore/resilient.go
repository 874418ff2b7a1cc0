package sessionstore

import (
	"container/list"
	"context"
	"errors"
	"sync"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/streaming"
)

// DurablePublisher writes to JetStream, or to the local spool while NATS is
// unreachable (*streaming.Publisher).
type DurablePublisher interface {
	PublishDurable(ctx context.Context, m streaming.Message) error
}

// Resilient is the JetStream store for an imperfect world: a NATS outage
// does not stop turns in sessions this replica knows (SPEC §4.9).
//
//   - Transcript messages are always written through the durable publisher:
//     acknowledged by JetStream, or fsynced in the local spool and published
//     when NATS returns (once, by message id, in order).
//   - Every session read or written is kept in a bounded cache. While NATS
//     is unreachable, a cached session is served from it, and its updates
//     are applied to the cache and spooled as plain KV puts, replayed after
//     the messages they follow. A session not in the cache is ErrUnavailable
//     (503 with Retry-After): its state is elsewhere.
//   - Listing sessions and reading transcripts need NATS.
//
// The price of the outage mode: a spooled KV put is last-writer-wins, not
// compare-and-set. It is safe while one replica serves the session, which
// the turn marker ensures as long as only this replica has it cached.
type Resilient struct {
	*JetStream
	pub   DurablePublisher
	cache *lru
}

// NewResilient wraps a JetStream store; cacheSize bounds the cache.
func NewResilient(inner *JetStream, pub DurablePublisher, cacheSize int) *Resilient {
	return &Resilient{JetStream: inner, pub: pub, cache: newLRU(cacheSize)}
}

func unavailableErr(err error) bool { return errors.Is(err, ErrUnavailable) }

// Create stores a new session; while NATS is away it is cached here and
// its record spooled.
func (r *Resilient) Create(ctx context.Context, s *sessionsv1.Session) (*Record, error) {
	rec, err := r.JetStream.Create(ctx, s)
	if err == nil {
		r.cache.put(rec)
		return rec, nil
	}
	if !unavailableErr(err) {
		return nil, err
	}
	rec = &Record{Session: s}
	if err := r.spoolRecord(ctx, rec); err != nil {
		return nil, err
	}
	r.cache.put(rec)
	return rec.Clone(), nil
}

// Get returns a session, from the cache while NATS is away.
func (r *Resilient) Get(ctx context.Context, tenantID, sessionID string) (*Record, error) {
	rec, err := r.JetStream.Get(ctx, tenantID, sessionID)
	if err == nil {
		r.cache.put(rec)
		return rec, nil
	}
	if unavailableErr(err) {
		if cached := r.cache.get(tenantID, sessionID); cached != nil {
			return cached, nil
		}
	}
	return nil, err
}

// Update applies fn with compare-and-set; while NATS is away, to the cached
// record, spooling the result.
func (r *Resilient) Update(ctx context.Context, tenantID, sessionID string, fn func(*Record) error) (*Record, error) {
	rec, err := r.JetStream.Update(ctx, tenantID, sessionID, fn)
	if err == nil {
		r.cache.put(rec)
		return rec, nil
	}
	if !unavailableErr(err) {
		return nil, err
	}
	return r.cache.update(tenantID, sessionID, func(rec *Record) error {
		if err := fn(rec); err != nil {
			return err
		}
		return r.spoolRecord(ctx, rec)
	})
}

// AppendMessage stores a message durably: JetStream's acknowledgement, or
// the local spool's fsync.
func (r *Resilient) AppendMessage(ctx context.Context, tenantID string, m *sessionsv1.Message) error {
	b, err := apijson.Marshal(m)
	if err != nil {
		return err
	}
	err = r.pub.PublishDurable(ctx, streaming.Message{
		Subject: TranscriptSubject(tenantID, m.GetSessionId()),
		Data:    b,
		MsgID:   m.GetId(),
	})
	if err != nil {
		return unavailable(ctx, err)
	}
	return nil
}

// spoolRecord writes a record as a KV put through the publisher.
func (r *Resilient) spoolRecord(ctx context.Context, rec *Record) error {
	b, err := encodeRecord(rec)
	if err != nil {
		return err
	}
	k := key(rec.Session.GetTenantId(), rec.Session.GetId())
	err = r.pub.PublishDurable(ctx, streaming.Message{
		Subject: "$KV." + SessionsBucket + "." + k,
		Data:    b,
		// Distinct per write (the sequence of events is the record's
		// version): a replay of the same write is stored once.
		MsgID: "session:" + k + ":" + itoa(rec.EventSeq) + ":" + itoa(uint64(rec.Session.GetMessageCount())) + ":" + turnID(rec),
	})
	if err != nil {
		return unavailable(ctx, err)
	}
	return nil
}

func turnID(r *Record) string {
	if r.Turn == nil {
		return "idle"
	}
	return r.Turn.ID
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// lru is a bounded map of the most recently used records.
type lru struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recent; values are *Record
	index map[string]*list.Element
}

func newLRU(n int) *lru {
	return &lru{max: max(n, 1), order: list.New(), index: map[string]*list.Element{}}
}

func (c *lru) put(r *Record) {
	k := key(r.Session.GetTenantId(), r.Session.GetId())
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.index[k]; ok {
		e.Value = r.Clone()
		c.order.MoveToFront(e)
		return
	}
	c.index[k] = c.order.PushFront(r.Clone())
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		old := last.Value.(*Record)
		delete(c.index, key(old.Session.GetTenantId(), old.Session.GetId()))
	}
}

func (c *lru) get(tenantID, sessionID string) *Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.index[key(tenantID, sessionID)]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*Record).Clone()
	}
	return nil
}

// update applies fn to a cached record under the cache's lock (so two local
// updates of one session cannot interleave) and keeps the result.
func (c *lru) update(tenantID, sessionID string, fn func(*Record) error) (*Record, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.index[key(tenantID, sessionID)]
	if !ok {
		return nil, ErrUnavailable
	}
	next := e.Value.(*Record).Clone()
	if err := fn(next); err != nil {
		return nil, err
	}
	e.Value = next
	c.order.MoveToFront(e)
	return next.Clone(), nil
}

var _ Store = (*Resilient)(nil)
