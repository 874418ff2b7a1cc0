package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/streaming"
)

// The tenant's listing is its own small bucket, kgent-session-index: key
// <tenant>.<ordinal> holds the id of the tenant's ordinal-th session. A new
// session claims the next ordinal with a KV create (which fails if the key
// exists), so two replicas creating at once get different places without a
// lock or a counter to contend on. The newest key gives the total; a page
// is a run of ordinals. Everything is O(1) or O(page) in the number of
// sessions.

// maxClaimAttempts bounds the retries of a claim under contention.
const maxClaimAttempts = 32

// ordinals remembers, per tenant, the next ordinal to try, so a replica's
// own creates never collide with each other (an atomic counter) and only
// another replica's creates cost a retry.
type ordinals struct {
	next *lru.Cache[string, *atomic.Uint64]
}

func newOrdinals() *ordinals {
	c, err := lru.New[string, *atomic.Uint64](10_000)
	if err != nil {
		panic(err) // only for a non-positive size
	}
	return &ordinals{next: c}
}

// counter returns the tenant's counter, creating it at start if absent.
func (o *ordinals) counter(tenant string, start uint64) *atomic.Uint64 {
	if c, ok := o.next.Get(tenant); ok {
		return c
	}
	c := &atomic.Uint64{}
	c.Store(start)
	if prev, ok, _ := o.next.PeekOrAdd(tenant, c); ok {
		return prev
	}
	return c
}

// headEvery is how often a claim records the tenant's newest ordinal under
// <tenant>.head: reading the head is O(1) (a wildcard "newest key" lookup
// is O(keys) on the server), and the few ordinals claimed since are found
// by probing the keys after it.
const headEvery = 8

// probeWindow is how many keys past the head one probe looks at.
const probeWindow = 32

func headKey(tenantID string) string { return tenantID + ".head" }

// lastOrdinal is the tenant's newest ordinal (0: none yet): the head, then
// a probe of the keys after it, in O(1) requests for any number of sessions.
func (s *JetStream) lastOrdinal(ctx context.Context, tenantID string) (uint64, error) {
	var last uint64
	m, err := streaming.Last(ctx, s.js, kvStream(IndexBucket), kvSubject(IndexBucket, headKey(tenantID)))
	switch {
	case errors.Is(err, streaming.ErrNotFound):
	case err != nil:
		return 0, unavailable(ctx, err)
	default:
		if !isKVDelete(m) {
			if last, err = strconv.ParseUint(string(m.Data), 10, 64); err != nil {
				return 0, fmt.Errorf("session index head of %s is not an ordinal", tenantID)
			}
		}
	}
	for {
		from := last + 1
		subjects := make([]string, probeWindow)
		for i := range subjects {
			subjects[i] = kvSubject(IndexBucket, tenantID+"."+strconv.FormatUint(from+uint64(i), 10))
		}
		found := last
		err := streaming.LastFor(ctx, s.js, kvStream(IndexBucket), subjects, func(m *jetstream.RawStreamMsg) {
			if n, err := strconv.ParseUint(lastToken(m.Subject), 10, 64); err == nil && n > found {
				found = n
			}
		})
		if err != nil {
			return 0, unavailable(ctx, err)
		}
		if found < from+probeWindow-1 {
			return found, nil
		}
		last = found // the whole window is taken: look further
	}
}

// moveHead records n as the tenant's newest ordinal. Best effort: a head
// that lags (a failed write) is corrected by lastOrdinal's probe.
func (s *JetStream) moveHead(ctx context.Context, index jetstream.KeyValue, tenantID string, n uint64) {
	_, _ = index.Put(ctx, headKey(tenantID), []byte(strconv.FormatUint(n, 10)))
}

// claimOrdinal gives the session the tenant's next place in the listing.
func (s *JetStream) claimOrdinal(ctx context.Context, index jetstream.KeyValue, tenantID, sessionID string) (uint64, error) {
	c, known := s.ordinals.next.Get(tenantID)
	if !known {
		last, err := s.lastOrdinal(ctx, tenantID)
		if err != nil {
			return 0, err
		}
		c = s.ordinals.counter(tenantID, last+1)
	}
	for attempt := 0; attempt < maxClaimAttempts; attempt++ {
		n := c.Add(1) - 1
		_, err := index.Create(ctx, tenantID+"."+strconv.FormatUint(n, 10), []byte(sessionID))
		if err == nil {
			if n%headEvery == 0 {
				s.moveHead(ctx, index, tenantID, n)
			}
			return n, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, unavailable(ctx, err)
		}
		// Another replica took it: move past the newest ordinal.
		last, err := s.lastOrdinal(ctx, tenantID)
		if err != nil {
			return 0, err
		}
		for {
			cur := c.Load()
			if cur > last || c.CompareAndSwap(cur, last+1) {
				break
			}
		}
	}
	return 0, fmt.Errorf("%w: could not take a place in the session listing", ErrConflict)
}
