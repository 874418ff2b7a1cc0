package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

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
//
// An update is spooled only when NATS is unreachable. While the connection
// is up, a failed update is a JetStream leader election (on a cluster, a
// few seconds): it is retried for up to ElectionWait before the outage mode
// takes over. A spooled update is invisible to the other replicas until it
// is replayed, so taking that path during an election would let a turn's
// lease lapse for everyone else while its replica still runs it.
type Resilient struct {
	*JetStream
	pub   DurablePublisher
	cache *recordCache
	// electionWait bounds the retries of an update while connected.
	electionWait time.Duration
}

// DefaultElectionWait is how long an update retries while connected
// before it is spooled: longer than a JetStream leader election (measured
// at 4.6–6.1 s on a 3-node cluster, docs/streaming.md), shorter than a turn
// lease (KGENTS_TURN_LEASE, 10 s), so a renewal that waits it out still
// lands in time.
const DefaultElectionWait = 8 * time.Second

// NewResilient wraps a JetStream store; cacheSize bounds the cache.
func NewResilient(inner *JetStream, pub DurablePublisher, cacheSize int) *Resilient {
	return &Resilient{JetStream: inner, pub: pub, cache: newRecordCache(cacheSize), electionWait: DefaultElectionWait}
}

// WithElectionWait sets how long an update retries while connected (0:
// not at all, spool at once as when disconnected).
func (r *Resilient) WithElectionWait(d time.Duration) *Resilient {
	r.electionWait = max(d, 0)
	return r
}

func unavailableErr(err error) bool { return errors.Is(err, ErrUnavailable) }

// isConnected reports whether NATS is known to be reachable (false when
// the store was given no connection state: it cannot tell an election from
// an outage, and treats every failure as an outage).
func (r *Resilient) isConnected() bool { return r.connected != nil && r.connected() }

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
	rec = &Record{Session: s, Unindexed: true}
	if err := r.spoolRecord(ctx, rec, ""); errors.Is(err, errStaleCache) {
		// The key is taken: the failed create was stored after all, its
		// answer lost. Unknown state: the caller may retry (a new id).
		return nil, unavailable(ctx, err)
	} else if err != nil {
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
// record, spooling the result. While connected it retries through a leader
// election first (see Resilient).
func (r *Resilient) Update(ctx context.Context, tenantID, sessionID string, fn func(*Record) error) (*Record, error) {
	var giveUp time.Time
	backoff := 25 * time.Millisecond
	for {
		rec, err := r.JetStream.Update(ctx, tenantID, sessionID, fn)
		if err == nil {
			r.cache.put(rec)
			return rec, nil
		}
		if !unavailableErr(err) {
			return nil, err
		}
		if !r.isConnected() || r.electionWait == 0 {
			break
		}
		now := time.Now()
		if giveUp.IsZero() {
			giveUp = now.Add(r.electionWait)
		}
		if !now.Before(giveUp) {
			break
		}
		t := time.NewTimer(min(backoff, giveUp.Sub(now)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
	rec, err := r.cache.update(tenantID, sessionID, func(rec *Record) error {
		held := ""
		if rec.Turn != nil {
			held = rec.Turn.ID
		}
		if err := fn(rec); err != nil {
			return err
		}
		released := ""
		if held != "" && (rec.Turn == nil || rec.Turn.ID != held) {
			released = held
		}
		return r.spoolRecord(ctx, rec, released)
	})
	if errors.Is(err, errStaleCache) {
		// JetStream answered after all, and the record has moved on since
		// this replica cached it: apply fn to the current record, by
		// compare-and-set, so fn decides on what is stored (a lease taken
		// meanwhile by another replica is seen as taken).
		if rec, err = r.JetStream.Update(ctx, tenantID, sessionID, fn); err == nil {
			r.cache.put(rec)
		}
	}
	return rec, err
}

// AppendMessage stores message n durably: JetStream's acknowledgement, or
// the local spool's fsync. It is written once (see JetStream.AppendMessage):
// a copy replayed after the duplicate window is refused and recognised.
func (r *Resilient) AppendMessage(ctx context.Context, tenantID string, n int, m *sessionsv1.Message) error {
	b, err := apijson.Marshal(m)
	if err != nil {
		return err
	}
	subject := TranscriptSubject(tenantID, m.GetSessionId(), n)
	err = r.pub.PublishDurable(ctx, streaming.Message{
		Subject: subject,
		Data:    b,
		MsgID:   m.GetId(),
		Header:  map[string]string{writeOnce: "0"},
	})
	if errors.Is(err, streaming.ErrRejected) {
		return r.sameMessage(ctx, subject, m.GetId())
	}
	if err != nil {
		return unavailable(ctx, err)
	}
	return nil
}

// spoolRecord writes a record as a KV put through the publisher: a
// compare-and-set against the revision the record was last read at (0 for
// one created here while NATS was away). Refused because another write came
// first, it is merged into that one instead (see reconcile.go); released
// names the turn whose lease this write gave up.
func (r *Resilient) spoolRecord(ctx context.Context, rec *Record, released string) error {
	b, err := encodeRecord(rec)
	if err != nil {
		return err
	}
	k := key(rec.Session.GetTenantId(), rec.Session.GetId())
	m := streaming.Message{
		Subject: kvSubject(SessionsBucket, k),
		Data:    b,
		// Distinct per write (the sequence of events is the record's
		// version): a replay of the same write is stored once.
		MsgID:  "session:" + k + ":" + itoa(rec.EventSeq) + ":" + itoa(uint64(rec.Session.GetMessageCount())) + ":" + turnID(rec),
		Header: map[string]string{expectedRevision: itoa(rec.Revision)},
	}
	if released != "" {
		m.Header[releasedHeader] = released
	}
	err = r.pub.PublishDurable(ctx, m)
	if errors.Is(err, streaming.ErrRejected) {
		// Published directly (JetStream answered) and refused: the cached
		// record is stale. Refused from the spool's replay instead, the
		// write would be merged (Resolver).
		return errStaleCache
	}
	if err != nil {
		return unavailable(ctx, err)
	}
	return nil
}

// errStaleCache: a record write from the cache was refused by JetStream
// because the stored record has moved on.
var errStaleCache = fmt.Errorf("%w: the cached session record is stale", ErrConflict)

// turnID names the record's turn state, lease renewals included.
func turnID(r *Record) string {
	if r.Turn == nil {
		return "idle"
	}
	return r.Turn.ID + "@" + itoa(uint64(max(r.Turn.Expires.UnixMilli(), 0)))
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

// recordCache keeps the most recently used records (a bounded LRU). Its
// own lock makes update a read-modify-write, so two local updates of one
// session cannot interleave.
type recordCache struct {
	mu  sync.Mutex
	lru *lru.Cache[string, *Record]
}

func newRecordCache(n int) *recordCache {
	c, err := lru.New[string, *Record](max(n, 1))
	if err != nil {
		panic(err) // only for a non-positive size
	}
	return &recordCache{lru: c}
}

func (c *recordCache) put(r *Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Add(key(r.Session.GetTenantId(), r.Session.GetId()), r.Clone())
}

func (c *recordCache) get(tenantID, sessionID string) *Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.lru.Get(key(tenantID, sessionID)); ok {
		return r.Clone()
	}
	return nil
}

// update applies fn to a cached record and keeps the result.
func (c *recordCache) update(tenantID, sessionID string, fn func(*Record) error) (*Record, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := key(tenantID, sessionID)
	cur, ok := c.lru.Get(k)
	if !ok {
		return nil, ErrUnavailable
	}
	next := cur.Clone()
	if err := fn(next); err != nil {
		return nil, err
	}
	c.lru.Add(k, next)
	return next.Clone(), nil
}

var _ Store = (*Resilient)(nil)
