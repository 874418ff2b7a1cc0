// Package quota enforces tenants' limits (SPEC §4.8): a per-key requests-
// per-minute token bucket, and per-tenant requests per UTC day and tokens per
// UTC month, shared by every replica through a JetStream KV bucket without a
// NATS round trip per request.
//
// Daily requests are admitted from leases: a replica reserves a block of the
// day's allowance with one compare-and-set on the shared counter and admits
// locally until the block is spent. Blocks are a sixteenth of what is left
// (at most 100), so they shrink to single requests near the limit, and a
// replica gives back a lease it has not touched for a second. The limit is
// never exceeded; the tolerance is the other way round — near the limit a
// request may be refused while another replica holds a few unused units, for
// at most a second.
//
// Usage (requests and tokens, for reports and the token quota) is counted
// locally and folded into the bucket every SyncInterval. The token quota is
// checked before a call and debited after it, so a reply may overshoot it,
// as may calls on other replicas within one sync interval.
//
// When NATS is unreachable both fail open on what this replica knows, and a
// metric counts it.
package quota

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Counters are named integer counters shared across replicas.
type Counters interface {
	// Value is the best known total: the shared value plus this replica's
	// counts not yet folded in.
	Value(key string) int64
	// Add counts n locally; it reaches the shared value at the next sync.
	Add(key string, n int64)
	// AddNow adds n to the shared value at once (with this replica's
	// pending counts) and returns the new total.
	AddNow(ctx context.Context, key string, n int64) (int64, error)
	// Reserve takes one unit of key's allowance of limit, from this
	// replica's lease or a new one; false when the allowance is spent.
	Reserve(ctx context.Context, key string, limit int64) (bool, error)
	// Unreserve gives n units back to this replica's lease of key.
	Unreserve(key string, n int64)
}

// Memory is the Counters of a single process: exact, no leases needed.
type Memory struct {
	mu sync.Mutex
	v  map[string]int64
}

// Reserve implements Counters.
func (m *Memory) Reserve(_ context.Context, key string, limit int64) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.v[key] >= limit {
		return false, nil
	}
	m.v[key]++
	return true, nil
}

// Unreserve implements Counters.
func (m *Memory) Unreserve(key string, n int64) {
	m.mu.Lock()
	m.v[key] -= n
	m.mu.Unlock()
}

// NewMemory returns empty counters.
func NewMemory() *Memory { return &Memory{v: map[string]int64{}} }

// Value implements Counters.
func (m *Memory) Value(key string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.v[key]
}

// Add implements Counters.
func (m *Memory) Add(key string, n int64) {
	m.mu.Lock()
	m.v[key] += n
	m.mu.Unlock()
}

// AddNow implements Counters.
func (m *Memory) AddNow(_ context.Context, key string, n int64) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.v[key] += n
	return m.v[key], nil
}

// Bucket is the KV bucket of the shared counters.
const Bucket = "kgent-usage"

// KV are Counters shared through a JetStream KV bucket.
type KV struct {
	js        jetstream.JetStream
	connected func() bool
	replicas  int
	interval  time.Duration
	log       *slog.Logger

	failOpen prometheus.Counter

	mu      sync.Mutex
	kv      jetstream.KeyValue
	entries map[string]*entry
	leases  map[string]*lease
	// readFailed is when a read by Value last failed.
	readFailed time.Time
}

// lease is a block of a shared allowance this replica reserved.
type lease struct {
	mu        sync.Mutex
	remaining int64
	lastUse   time.Time
}

// entry is one counter as this replica knows it.
type entry struct {
	shared   int64     // last value read from the bucket
	folding  int64     // counted here, being added to the bucket right now
	pending  int64     // counted here, not yet in the bucket
	lastUsed time.Time // entries idle for long are dropped; zero: loaded, not used yet
	readAt   time.Time // when shared was read from the bucket; zero: never
	tried    time.Time // last synchronous refresh attempted by Value
	gen      uint64    // bumped whenever shared is set, so a slow read cannot overwrite a newer one
}

// total is the best known value: counts on their way into the bucket still
// count, or a sync in progress would briefly make room under a limit.
func (e *entry) total() int64 { return e.shared + e.folding + e.pending }

// KVOptions configure NewKV.
type KVOptions struct {
	Replicas     int
	SyncInterval time.Duration // default 250ms
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
	// Connected, when set, lets operations fail at once (and fail open)
	// while NATS is known to be unreachable, instead of waiting out a
	// request timeout on every call.
	Connected func() bool
}

// NewKV returns shared counters; Run must be running for them to sync.
func NewKV(js jetstream.JetStream, o KVOptions) *KV {
	if o.SyncInterval <= 0 {
		o.SyncInterval = 250 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	k := &KV{
		js: js, connected: o.Connected, replicas: max(o.Replicas, 1), interval: o.SyncInterval, log: o.Logger,
		entries: map[string]*entry{},
		leases:  map[string]*lease{},
		failOpen: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kgents_quota_fail_open_total",
			Help: "Quota counter operations that could not reach NATS and fell back to local counts.",
		}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(k.failOpen)
	}
	return k
}

// bucket returns the KV bucket, creating it on first use. Counters live 40
// days: long enough for a month's.
func (k *KV) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	if k.connected != nil && !k.connected() {
		return nil, nats.ErrDisconnected
	}
	k.mu.Lock()
	kv := k.kv
	k.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	kv, err := k.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "kgents usage counters: <tenant>.<counter>.<period>",
		History:     1,
		TTL:         40 * 24 * time.Hour,
		Storage:     jetstream.FileStorage,
		Replicas:    k.replicas,
	})
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	k.kv = kv
	k.mu.Unlock()
	return kv, nil
}

func (k *KV) entry(key string) *entry {
	e := k.entries[key]
	if e == nil {
		e = &entry{}
		k.entries[key] = e
	}
	e.lastUsed = time.Now()
	return e
}

// Value implements Counters. A counter this replica has not read from the
// bucket lately — first used since the start (and not loaded), used again
// after it was dropped from memory, or not refreshed because syncs fail —
// is read before it is trusted, once per staleAfter and for at most
// firstReadTimeout; if that fails, the local view is returned (fail open).
func (k *KV) Value(key string) int64 {
	k.mu.Lock()
	e := k.entry(key)
	now := time.Now()
	if now.Sub(e.readAt) <= k.staleAfter() || now.Sub(e.tried) <= k.staleAfter() || now.Sub(k.readFailed) < readFailedPause {
		defer k.mu.Unlock()
		return e.total()
	}
	e.tried = now
	gen := e.gen
	k.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), firstReadTimeout)
	defer cancel()
	v, err := k.fold(ctx, key, 0)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.failOpen.Inc()
		k.readFailed = time.Now() // NATS is likely away: no more reads on the request path for a while
	} else if e.gen == gen {
		e.setShared(v, now)
	}
	return e.total()
}

// readFailedPause is how long Value stops reading counters after a read
// failed (the sync loop keeps trying meanwhile).
const readFailedPause = 5 * time.Second

// firstReadTimeout bounds the read of a counter Value does not trust yet.
const firstReadTimeout = 500 * time.Millisecond

// staleAfter is how old a counter's shared value may be before Value reads
// it again: a few sync intervals, so a counter the sync loop keeps fresh is
// never read on the request path.
func (k *KV) staleAfter() time.Duration { return max(4*k.interval, time.Second) }

// setShared records the bucket's value v, read at t (under k.mu).
func (e *entry) setShared(v int64, t time.Time) {
	e.shared, e.readAt = v, t
	e.gen++
}

// Load reads the current UTC day's and month's counters of every tenant
// (requests and tokens) from the bucket, so a replica that has just started
// enforces and reports the shared totals from its first call instead of
// counting from zero until its first sync. Call it before serving, bounded
// by ctx; on failure (NATS away) the counters fail open as documented and
// each is read when first used.
func (k *KV) Load(ctx context.Context) error {
	kv, err := k.bucket(ctx)
	if err != nil {
		k.failOpen.Inc()
		return fmt.Errorf("quota: loading the shared counters: %w", err)
	}
	now := time.Now().UTC()
	day, month := now.Format("20060102"), now.Format("200601")
	w, err := kv.WatchFiltered(ctx, []string{"*.req.d." + day, "*.tok.d." + day, "*.tok.m." + month}, jetstream.IgnoreDeletes())
	if err != nil {
		k.failOpen.Inc()
		return fmt.Errorf("quota: loading the shared counters: %w", err)
	}
	defer func() { _ = w.Stop() }()
	n := 0
	for {
		select {
		case <-ctx.Done():
			k.failOpen.Inc()
			return fmt.Errorf("quota: loading the shared counters: %w (after %d)", ctx.Err(), n)
		case ev, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("quota: loading the shared counters: the watch ended after %d", n)
			}
			if ev == nil { // all current values delivered
				k.log.Info("quota counters loaded", "counters", n)
				return nil
			}
			v, err := strconv.ParseInt(string(ev.Value()), 10, 64)
			if err != nil {
				continue
			}
			k.mu.Lock()
			e := k.entries[ev.Key()]
			if e == nil {
				e = &entry{} // lastUsed zero: not refreshed until used
				k.entries[ev.Key()] = e
			}
			if e.readAt.IsZero() {
				e.setShared(v, time.Now())
			}
			k.mu.Unlock()
			n++
		}
	}
}

// Add implements Counters.
func (k *KV) Add(key string, n int64) {
	k.mu.Lock()
	k.entry(key).pending += n
	k.mu.Unlock()
}

// AddNow implements Counters. On failure the count stays local (it is
// folded in later) and the error says the total may be stale.
func (k *KV) AddNow(ctx context.Context, key string, n int64) (int64, error) {
	k.mu.Lock()
	e := k.entry(key)
	delta := e.pending + n
	e.pending = 0
	e.folding += delta
	k.mu.Unlock()
	total, err := k.fold(ctx, key, delta)
	k.mu.Lock()
	defer k.mu.Unlock()
	e.folding -= delta
	if err != nil {
		e.pending += delta
		k.failOpen.Inc()
		return e.total(), err
	}
	// The bucket's value now holds delta; counts added meanwhile stay pending.
	e.setShared(total-e.folding, time.Now())
	return e.total(), nil
}

// Reserve implements Counters.
func (k *KV) Reserve(ctx context.Context, key string, limit int64) (bool, error) {
	k.mu.Lock()
	l := k.leases[key]
	if l == nil {
		l = &lease{}
		k.leases[key] = l
	}
	k.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastUse = time.Now()
	if l.remaining > 0 {
		l.remaining--
		return true, nil
	}
	// Lease a new block: a sixteenth of what is left, 1 to 100 units.
	var got int64
	_, err := k.cas(ctx, key, func(cur int64) (int64, bool) {
		left := limit - cur
		if left <= 0 {
			got = 0
			return cur, false
		}
		got = min(max(left/16, 1), 100)
		return cur + got, true
	})
	if err != nil {
		k.failOpen.Inc()
		return true, err // fail open
	}
	if got == 0 {
		return false, nil
	}
	l.remaining = got - 1
	return true, nil
}

// Unreserve implements Counters.
func (k *KV) Unreserve(key string, n int64) {
	k.mu.Lock()
	l := k.leases[key]
	k.mu.Unlock()
	if l == nil {
		return
	}
	l.mu.Lock()
	l.remaining += n
	l.mu.Unlock()
}

// leaseIdle is how long an untouched lease is kept before its units go back.
const leaseIdle = time.Second

// returnLeases gives back the unused units of leases idle for leaseIdle
// (all of them when all is set, at shutdown).
func (k *KV) returnLeases(ctx context.Context, all bool) {
	k.mu.Lock()
	var keys []string
	for key := range k.leases {
		keys = append(keys, key)
	}
	k.mu.Unlock()
	now := time.Now()
	for _, key := range keys {
		k.mu.Lock()
		l := k.leases[key]
		k.mu.Unlock()
		l.mu.Lock()
		n := l.remaining
		if n == 0 || (!all && now.Sub(l.lastUse) < leaseIdle) {
			l.mu.Unlock()
			continue
		}
		if _, err := k.cas(ctx, key, func(cur int64) (int64, bool) { return max(cur-n, 0), true }); err == nil {
			l.remaining = 0
		}
		l.mu.Unlock()
	}
}

// fold adds delta to the shared value with compare-and-set and returns the
// new shared value (delta 0 just reads it).
func (k *KV) fold(ctx context.Context, key string, delta int64) (int64, error) {
	return k.cas(ctx, key, func(cur int64) (int64, bool) { return cur + delta, delta != 0 })
}

// cas reads key, computes its next value with next (which may decline to
// write) and stores it with compare-and-set, retrying on conflicts. It
// returns the value in the bucket afterwards.
func (k *KV) cas(ctx context.Context, key string, next func(cur int64) (int64, bool)) (int64, error) {
	kv, err := k.bucket(ctx)
	if err != nil {
		return 0, err
	}
	for attempt := 0; attempt < 32; attempt++ {
		cur, rev, err := k.read(ctx, kv, key)
		if err != nil {
			return 0, err
		}
		v, write := next(cur)
		if !write {
			return cur, nil
		}
		val := []byte(strconv.FormatInt(v, 10))
		if rev == 0 {
			_, err = kv.Create(ctx, key, val)
		} else {
			_, err = kv.Update(ctx, key, val, rev)
		}
		switch {
		case err == nil:
			return v, nil
		case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			continue // another replica folded first: read again
		case k.landed(ctx, kv, key, rev, val):
			return v, nil
		default:
			return 0, err
		}
	}
	return 0, fmt.Errorf("quota counter %s: too much contention", key)
}

// landed reports whether a write that failed without an answer (a timeout
// while JetStream was slow) was stored after all: the key holds exactly
// what it wrote, as the revision after the one it read (or, for a create,
// at all). Without this check the caller keeps the delta and folds it again
// next time: one day's tokens were counted twice in a loaded test run. (A
// second writer storing the very same value in that instant would be taken
// for ours: the count is then short by that write, which is rarer than a
// lost answer and errs toward the customer.)
func (k *KV) landed(ctx context.Context, kv jetstream.KeyValue, key string, rev uint64, val []byte) bool {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	e, err := kv.Get(rctx, key)
	if err != nil || !bytes.Equal(e.Value(), val) {
		return false
	}
	return rev == 0 || e.Revision() > rev
}

func (k *KV) read(ctx context.Context, kv jetstream.KeyValue, key string) (int64, uint64, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	v, err := strconv.ParseInt(string(e.Value()), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("quota counter %s is corrupt: %w", key, err)
	}
	return v, e.Revision(), nil
}

// Run folds pending counts into the bucket and refreshes recently used
// counters every sync interval, until ctx ends (then it folds once more).
func (k *KV) Run(ctx context.Context) {
	t := time.NewTicker(k.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			k.Sync(flushCtx)
			k.returnLeases(flushCtx, true)
			cancel()
			return
		case <-t.C:
			k.Sync(ctx)
			k.returnLeases(ctx, false)
		}
	}
}

// idleAfter drops counters nobody used for a while from memory (the bucket
// keeps them).
const idleAfter = 10 * time.Minute

// Sync folds and refreshes every counter once.
func (k *KV) Sync(ctx context.Context) {
	k.mu.Lock()
	keys := make([]string, 0, len(k.entries))
	now := time.Now()
	for key, e := range k.entries {
		if e.lastUsed.IsZero() { // loaded, never used: kept for a while, not refreshed
			if now.Sub(e.readAt) > idleAfter {
				delete(k.entries, key)
			}
			continue
		}
		if e.pending == 0 && now.Sub(e.lastUsed) > idleAfter {
			delete(k.entries, key)
			continue
		}
		keys = append(keys, key)
	}
	k.mu.Unlock()
	for _, key := range keys {
		k.mu.Lock()
		e := k.entries[key]
		if e == nil {
			k.mu.Unlock()
			continue
		}
		delta := e.pending
		e.pending = 0
		e.folding += delta
		k.mu.Unlock()
		total, err := k.fold(ctx, key, delta)
		k.mu.Lock()
		e.folding -= delta
		if err != nil {
			e.pending += delta
			k.mu.Unlock()
			if ctx.Err() == nil {
				k.failOpen.Inc()
				k.log.Debug("quota counter sync failed; counting locally", "error", err)
			}
			return // NATS is likely down: try everything again next tick
		}
		e.setShared(total-e.folding, time.Now())
		k.mu.Unlock()
	}
}
