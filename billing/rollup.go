package billing

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kgents/kgents-go/streaming"
)

// The usage rollup (SPEC §4.14) keeps per-tenant usage history in the KV
// bucket kgent-usage-rollup: hourly, daily and monthly buckets of exactly
// the events that are billed. docs/billing.md ("Usage history") gives the
// design and why; in short:
//
// Billed is what OpenMeter keeps: one event per id (it drops a copy of an
// id it has), minus the events it rejected (dead-lettered by the sink).
// The rollup derives that from the metering stream alone, as a function of
// its contents in sequence order: an event counts unless an earlier store
// of the same CloudEvent id, not refunded, lies within DedupeWindow before
// it; a dead letter refunds (subtracts) the store that counted its id,
// once; a store of a refunded id (an operator's re-drive) counts again.
// Every replica reads the whole stream (direct gets, no consumer) and keeps
// the ids of the window in memory, so every replica takes the same
// decisions; they share the bucket writes range by range.
//
// Exactly once for bucket writes: the key _applied holds the last sequence
// of the deployment's last completed range; every bucket holds the last
// sequence added to it. A replica reads the range after _applied (or after
// what it applied itself), adds each change to its buckets in sequence
// order with compare-and-set — skipping a change at or below the bucket's
// own last sequence, which another replica (or a crashed earlier attempt)
// added already — and then moves _applied on with compare-and-set.

// RollupBucket holds the history and the rollup's position.
const RollupBucket = "kgent-usage-rollup"

// Dedupe defaults (USAGE_DEDUPE_WINDOW, USAGE_DEDUPE_MAX_IDS).
const (
	// DefaultDedupeWindow covers a replay of an Idempotency-Key (kept 24 h)
	// and a spool replayed after a day-long outage.
	DefaultDedupeWindow = 48 * time.Hour
	// DefaultDedupeMaxIDs bounds the ids kept in memory (about 120 bytes
	// each, BenchmarkIDIndex): 4 million ≈ 0.5 GB, reached at 23 events/s
	// sustained over the default window.
	DefaultDedupeMaxIDs = 4_000_000
)

const (
	appliedKey = "_applied"
	// rollupBatch is the most messages of one range: a busy stream is
	// rolled up in large ranges, so each bucket is written once for many
	// events.
	rollupBatch = 2048
	// applyParallelism bounds the bucket writes of a range in flight.
	applyParallelism = 16
	// loadBatch is the most messages one read of a catch-up asks for.
	loadBatch  = 4096
	rollupPoll = 250 * time.Millisecond
	// yieldEvery is how many events decide reads between yields (~0.5 ms).
	yieldEvery = 256
	// loadMargin widens the window loaded at start: server and replica
	// clocks differ a little, and an id more is harmless.
	loadMargin = time.Minute
)

// RollupConfig configures NewRollup.
type RollupConfig struct {
	// Replicas of the KV bucket if it has to be created (NATS_REPLICAS).
	Replicas int
	// DedupeWindow is how far back a copy of an event id is recognised
	// (USAGE_DEDUPE_WINDOW, 48 h; at most the stream's 30 days).
	DedupeWindow time.Duration
	// DedupeMaxIDs bounds the ids kept (USAGE_DEDUPE_MAX_IDS, 4 million):
	// beyond it the oldest are forgotten before their window ends.
	DedupeMaxIDs int
	// Logger; nil is slog.Default().
	Logger *slog.Logger
	// Registerer for the kgents_usage_rollup_* metrics; nil keeps them private.
	Registerer prometheus.Registerer
}

func (c RollupConfig) withDefaults() RollupConfig {
	c.Replicas = max(c.Replicas, 1)
	if c.DedupeWindow <= 0 {
		c.DedupeWindow = DefaultDedupeWindow
	}
	c.DedupeWindow = min(c.DedupeWindow, StreamMaxAge)
	if c.DedupeMaxIDs <= 0 {
		c.DedupeMaxIDs = DefaultDedupeMaxIDs
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return c
}

// Counts is one bucket of a tenant's usage.
type Counts struct {
	Requests            int64            `json:"requests"`
	Errors              int64            `json:"errors"`
	Tokens              int64            `json:"tokens"`
	DialogueTurns       int64            `json:"dialogue_turns"`
	AgenteseInvocations int64            `json:"agentese_invocations"`
	SessionsCreated     int64            `json:"sessions_created"`
	ByType              map[string]int64 `json:"by_type,omitempty"`
}

func (c *Counts) add(o Counts) {
	c.Requests += o.Requests
	c.Errors += o.Errors
	c.Tokens += o.Tokens
	c.DialogueTurns += o.DialogueTurns
	c.AgenteseInvocations += o.AgenteseInvocations
	c.SessionsCreated += o.SessionsCreated
	for k, v := range o.ByType {
		if c.ByType == nil {
			c.ByType = map[string]int64{}
		}
		c.ByType[k] += v
		if c.ByType[k] == 0 {
			delete(c.ByType, k) // a refund took the only one back
		}
	}
}

// addType adds n to by_type[typ].
func (c *Counts) addType(typ string, n int64) {
	if typ == "" || n == 0 {
		return
	}
	if c.ByType == nil {
		c.ByType = map[string]int64{}
	}
	c.ByType[typ] += n
	if c.ByType[typ] == 0 {
		delete(c.ByType, typ) // a refund took the only one back
	}
}

// negated is what refunding c subtracts.
func (c Counts) negated() Counts {
	n := Counts{Requests: -c.Requests, Errors: -c.Errors, Tokens: -c.Tokens, DialogueTurns: -c.DialogueTurns,
		AgenteseInvocations: -c.AgenteseInvocations, SessionsCreated: -c.SessionsCreated}
	if c.ByType != nil {
		n.ByType = make(map[string]int64, len(c.ByType))
		for k, v := range c.ByType {
			n.ByType[k] = -v
		}
	}
	return n
}

// storedBucket is a bucket's value in KV.
type storedBucket struct {
	Counts
	// LastSeq is the last kgent-metering sequence added.
	LastSeq uint64 `json:"last_seq"`
}

// Granularity of a history.
type Granularity string

// The granularities.
const (
	Hourly Granularity = "hour"
	Daily  Granularity = "day"
)

// bucketKinds are the granularities every event is counted in.
var bucketKinds = [...]string{"h", "d", "m"}

// bucketKeys caches bucketKey for the rollup's one goroutine: a run of
// events mostly falls in the same few hours of the same tenants. It is
// cleared when it holds maxBucketKeys.
type bucketKeys struct {
	m map[bucketKeyOf]string
}

type bucketKeyOf struct {
	tenant string
	kind   string
	hour   int64 // Unix hours: the finest granularity
}

const maxBucketKeys = 4096

func (b *bucketKeys) key(tenant, kind string, t time.Time) string {
	of := bucketKeyOf{tenant: tenant, kind: kind, hour: t.Unix() / 3600}
	if t.Unix() < 0 {
		return bucketKey(tenant, kind, t) // before 1970: not worth a cache entry
	}
	if k, ok := b.m[of]; ok {
		return k
	}
	if b.m == nil || len(b.m) >= maxBucketKeys {
		b.m = make(map[bucketKeyOf]string, 64)
	}
	k := bucketKey(tenant, kind, t)
	b.m[of] = k
	return k
}

// bucketKey names a tenant's bucket that holds t: <tenant>.h.YYYYMMDDHH,
// <tenant>.d.YYYYMMDD or <tenant>.m.YYYYMM.
func bucketKey(tenant, kind string, t time.Time) string {
	t = t.UTC()
	switch kind {
	case "h":
		return tenant + ".h." + t.Format("2006010215")
	case "d":
		return tenant + ".d." + t.Format("20060102")
	}
	return tenant + ".m." + t.Format("200601")
}

// Rollup maintains and reads the usage history.
type Rollup struct {
	js  jetstream.JetStream
	cfg RollupConfig
	log *slog.Logger
	m   *rollupMetrics

	kvMu sync.Mutex
	kv   jetstream.KeyValue // nil until created (bucket)

	// Owned by Run's goroutine.
	ids    *idIndex
	reader usageReader
	evs    []usageEvent // the events of the message being decided (reused)
	// spare is the last range's change lists, emptied, for the next: the
	// same buckets come up range after range, and growing their lists from
	// nothing each time was a tenth of the rollup's CPU.
	spare map[string][]change
	keys  bucketKeys
	// next is the first stream sequence the index has not taken in; 0
	// until the window is loaded.
	next uint64
}

// NewRollup returns the rollup on js.
func NewRollup(js jetstream.JetStream, cfg RollupConfig) *Rollup {
	cfg = cfg.withDefaults()
	m := newRollupMetrics(cfg.Registerer)
	ids := newIDIndex(cfg.DedupeWindow, cfg.DedupeMaxIDs)
	ids.early = m.early
	return &Rollup{js: js, cfg: cfg, log: cfg.Logger.With("component", "usage-rollup"), m: m, ids: ids}
}

// bucket returns the history's bucket, created on first use. Run's goroutine
// and the readers (History, Top) all call it, so kv is kept under kvMu.
func (r *Rollup) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	r.kvMu.Lock()
	defer r.kvMu.Unlock()
	if r.kv != nil {
		return r.kv, nil
	}
	kv, err := r.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      RollupBucket,
		Description: "kgents usage history: <tenant>.h.YYYYMMDDHH, .d.YYYYMMDD, .m.YYYYMM",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    r.cfg.Replicas,
	})
	if err != nil {
		return nil, err
	}
	r.kv = kv
	return kv, nil
}

// Run rolls usage events up until ctx ends, retrying (with a pause) while
// NATS is unreachable.
func (r *Rollup) Run(ctx context.Context) {
	for ctx.Err() == nil {
		err := r.run(ctx)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("usage rollup paused; retrying", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

func (r *Rollup) run(ctx context.Context) error {
	kv, err := r.bucket(ctx)
	if err != nil {
		return fmt.Errorf("rollup bucket: %w", err)
	}
	if _, err := EnsureStream(ctx, r.js, r.cfg.Replicas); err != nil {
		return err
	}
	for ctx.Err() == nil {
		progressed, err := r.step(ctx, kv)
		if err != nil {
			return err
		}
		if !progressed {
			select {
			case <-ctx.Done():
			case <-time.After(rollupPoll):
			}
		}
	}
	return ctx.Err()
}

// position reads _applied: the deployment's position and its revision (0:
// none yet).
func position(ctx context.Context, kv jetstream.KeyValue) (applied, rev uint64, err error) {
	e, err := kv.Get(ctx, appliedKey)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return 0, 0, nil
	case err != nil:
		return 0, 0, err
	}
	if applied, err = strconv.ParseUint(string(e.Value()), 10, 64); err != nil {
		return 0, 0, fmt.Errorf("rollup position %q is corrupt", e.Value())
	}
	return applied, e.Revision(), nil
}

// step adds the next range to the buckets; it reports whether there was
// anything to do.
func (r *Rollup) step(ctx context.Context, kv jetstream.KeyValue) (bool, error) {
	applied, rev, err := position(ctx, kv)
	if err != nil {
		return false, err
	}
	if r.next == 0 {
		if err := r.load(ctx, applied); err != nil {
			return false, err
		}
	}
	if r.next <= applied {
		// Other replicas applied these: take their ids in, decided the
		// same way, without writing.
		return true, r.catchUp(ctx, applied)
	}
	// r.next > applied: everything before r.next is in the buckets (this
	// replica applied it, or the deployment did).
	var msgs []*jetstream.RawStreamMsg
	_, _, err = streaming.ReadFrom(ctx, r.js, StreamName, StreamSubjects, r.next, rollupBatch, func(m *jetstream.RawStreamMsg) bool {
		msgs = append(msgs, m)
		return true
	})
	if err != nil {
		return false, err
	}
	if len(msgs) == 0 {
		return false, nil
	}
	ov := r.ids.overlay()
	defer ov.rollback() // unless committed below: the range is decided again
	changes, err := r.decide(ctx, ov, msgs, true)
	defer r.recycle(changes)
	if err != nil {
		return false, err
	}
	if err := r.apply(ctx, kv, changes); err != nil {
		return false, err
	}
	ov.commit()
	last := msgs[len(msgs)-1].Sequence
	r.next = last + 1
	r.m.ids.Set(float64(r.ids.len()))
	pos := []byte(strconv.FormatUint(last, 10))
	if rev == 0 {
		_, err = kv.Create(ctx, appliedKey, pos)
	} else {
		_, err = kv.Update(ctx, appliedKey, pos, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true, nil // another replica moved it; the next step starts from what this one did
	}
	return true, err
}

// load takes in the ids of the window before the first range this replica
// will decide, so its decisions are the deployment's.
func (r *Rollup) load(ctx context.Context, applied uint64) error {
	start := time.Now()
	from := start
	if m, err := streaming.First(ctx, r.js, StreamName, StreamSubjects, applied+1); err == nil {
		if m.Time.Before(from) {
			from = m.Time
		}
	} else if !errors.Is(err, streaming.ErrNotFound) {
		return err
	}
	first, err := streaming.FirstAt(ctx, r.js, StreamName, StreamSubjects, from.Add(-r.cfg.DedupeWindow-loadMargin))
	switch {
	case errors.Is(err, streaming.ErrNotFound):
		r.next = applied + 1
		return nil
	case err != nil:
		return err
	}
	r.next = min(first.Sequence, applied+1)
	if err := r.catchUp(ctx, applied); err != nil {
		r.next = 0
		return err
	}
	r.log.Info("usage rollup: dedupe window loaded", "ids", r.ids.len(), "through_sequence", applied,
		"window", r.cfg.DedupeWindow, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// catchUp takes in the ids of r.next … through, which are in the buckets
// already.
func (r *Rollup) catchUp(ctx context.Context, through uint64) error {
	for r.next <= through {
		var msgs []*jetstream.RawStreamMsg
		_, done, err := streaming.ReadFrom(ctx, r.js, StreamName, StreamSubjects, r.next, loadBatch, func(m *jetstream.RawStreamMsg) bool {
			if m.Sequence > through {
				return false
			}
			msgs = append(msgs, m)
			return true
		})
		if err != nil {
			return err
		}
		if len(msgs) == 0 {
			r.next = through + 1
			break
		}
		if err := r.takeIn(ctx, msgs); err != nil {
			return err
		}
		r.next = msgs[len(msgs)-1].Sequence + 1
		if done {
			r.next = max(r.next, through+1)
		}
	}
	r.m.ids.Set(float64(r.ids.len()))
	return nil
}

// takeIn decides msgs into the id index only (their changes are in the
// buckets already); on failure the index is as it was.
func (r *Rollup) takeIn(ctx context.Context, msgs []*jetstream.RawStreamMsg) error {
	ov := r.ids.overlay()
	defer ov.rollback() // unless committed: a no-op then
	changes, err := r.decide(ctx, ov, msgs, false)
	r.recycle(changes)
	if err != nil {
		return err
	}
	ov.commit()
	return nil
}

// recycle keeps changes (decided, and applied or given up on) as the next
// range's spare lists. A bucket without a change in this range is dropped:
// its hour, day or month has moved on.
func (r *Rollup) recycle(changes map[string][]change) {
	if changes == nil {
		return
	}
	for k, cs := range changes {
		if len(cs) == 0 {
			delete(changes, k)
			continue
		}
		changes[k] = cs[:0]
	}
	r.spare = changes
}

// usageEvent is the part of a CloudEvent the rollup reads.
type usageEvent struct {
	ID      string    `json:"id"`
	Type    string    `json:"type"`
	Subject string    `json:"subject"`
	Time    time.Time `json:"time"`
	Data    struct {
		StatusCode  float64 `json:"status_code"`
		TokensTotal float64 `json:"tokens_total"`
	} `json:"data"`
}

// countsOf is what one event adds to its buckets (its by_type count is
// the change's typ and n: no map per event).
func countsOf(ev usageEvent) Counts {
	var c Counts
	switch ev.Type {
	case TypeAPIRequest:
		c.Requests = 1
		if ev.Data.StatusCode >= 400 {
			c.Errors = 1
		}
	case TypeLLMTokens:
		c.DialogueTurns = 1
		c.Tokens = int64(ev.Data.TokensTotal)
	case TypeAgenteseInvoke:
		c.AgenteseInvocations = 1
	case TypeSessionCreate:
		c.SessionsCreated = 1
	}
	return c
}

// change is one event's effect on one bucket, at its stream sequence: c,
// and n added to by_type[typ].
type change struct {
	seq uint64
	c   Counts
	typ string
	n   int64
}

// decide takes a range's messages (in sequence order) through the id
// index (ov) and returns what they change, bucket by bucket, in sequence
// order. Without content only the index is updated (ranges applied
// already).
func (r *Rollup) decide(ctx context.Context, ov *overlay, msgs []*jetstream.RawStreamMsg, content bool) (map[string][]change, error) {
	out := r.spare
	if out == nil {
		out = map[string][]change{}
	}
	r.spare = nil
	add := func(ev usageEvent, seq uint64, c Counts, n int64) {
		for _, kind := range bucketKinds {
			k := r.keys.key(ev.Subject, kind, ev.Time)
			out[k] = append(out[k], change{seq: seq, c: c, typ: ev.Type, n: n})
		}
	}
	bySeq := make(map[uint64]*jetstream.RawStreamMsg, len(msgs))
	for _, m := range msgs {
		bySeq[m.Sequence] = m
	}
	decided := 0
	for _, m := range msgs {
		if decided >= yieldEvery {
			// A range is up to rollupBatch batches of calls: seconds of
			// CPU on one goroutine. Let the calls being served have the
			// processor in between, not only at the runtime's 10 ms
			// preemption (that was the tail of a loaded replica's latency).
			decided = 0
			runtime.Gosched()
		}
		dead := strings.HasPrefix(m.Subject, DeadSubjectPrefix)
		if !dead && !strings.HasPrefix(m.Subject, EventSubjectPrefix) {
			continue
		}
		evs := r.reader.read(m.Subject, m.Data, m.Time, r.evs[:0])
		r.evs = evs
		decided += len(evs)
		for i, ev := range evs {
			if seenBefore(evs[:i], ev.ID) {
				// The same id twice in one message: a call and its
				// Idempotency-Key replay batched together. One store.
				continue
			}
			if err := r.decideEvent(ctx, ov, m, ev, dead, content, bySeq, add); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// seenBefore reports whether id is among evs (a message's events before
// the one read: at most MaxBatchEvents, so a scan).
func seenBefore(evs []usageEvent, id string) bool {
	for i := range evs {
		if evs[i].ID == id {
			return true
		}
	}
	return false
}

// decideEvent is decide for one event of message m.
func (r *Rollup) decideEvent(ctx context.Context, ov *overlay, m *jetstream.RawStreamMsg, ev usageEvent, dead, content bool,
	bySeq map[uint64]*jetstream.RawStreamMsg, add func(usageEvent, uint64, Counts, int64)) error {
	{
		key, at := keyOf(ev.ID), m.Time.UnixNano()
		was := ov.find(key)
		e, known := was.within(at, r.ids.window)
		if !dead {
			// A store counts unless an earlier one of its id, not
			// refunded, is within the window; the same store read again
			// (a range retried) decides the same.
			if known && !e.refunded && e.seq != m.Sequence {
				return nil
			}
			ov.replace(key, idEntry{seq: m.Sequence, at: at}, was)
			if content {
				add(ev, m.Sequence, countsOf(ev), 1)
			}
			return nil
		}
		// A dead letter: OpenMeter did not take the id. Refund the store
		// that counted it, once.
		if known && e.refunded {
			return nil
		}
		counted := ev
		if known && content {
			// What was counted is that store's content (a copy from an
			// interrupted call's record may differ from the rejected one).
			if c, err := r.storedEvent(ctx, e.seq, ev.ID, bySeq); err != nil {
				return err
			} else if c != nil {
				counted = *c
			}
		}
		seq := m.Sequence
		if known {
			seq = e.seq
		}
		ov.replace(key, idEntry{seq: seq, at: at, refunded: true}, was)
		if content {
			add(counted, m.Sequence, countsOf(counted).negated(), -1)
		}
	}
	return nil
}

// storedEvent reads event id as stored at seq (from the range when it is
// there; in a batch, the event of that id); nil if it is gone.
func (r *Rollup) storedEvent(ctx context.Context, seq uint64, id string, inRange map[uint64]*jetstream.RawStreamMsg) (*usageEvent, error) {
	m := inRange[seq]
	if m == nil {
		got, err := streaming.First(ctx, r.js, StreamName, EventSubjects, seq)
		switch {
		case errors.Is(err, streaming.ErrNotFound):
			return nil, nil
		case err != nil:
			return nil, err
		}
		if got.Sequence != seq {
			return nil, nil // removed (an operator's purge): refund the dead letter's copy
		}
		m = got
	}
	for _, ev := range r.reader.read(m.Subject, m.Data, m.Time, nil) {
		if ev.ID == id {
			return &ev, nil
		}
	}
	return nil, nil
}

// apply adds a range's changes to their buckets, each with compare-and-set,
// up to applyParallelism buckets at a time (each is its own round trips).
func (r *Rollup) apply(ctx context.Context, kv jetstream.KeyValue, changes map[string][]change) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, applyParallelism)
	for k, cs := range changes {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := r.addTo(ctx, kv, k, cs); err != nil {
				mu.Lock()
				if first == nil {
					first = err
					cancel()
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

func (r *Rollup) addTo(ctx context.Context, kv jetstream.KeyValue, key string, cs []change) error {
	for attempt := 0; attempt < 16; attempt++ {
		var cur storedBucket
		var rev uint64
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			if err := json.Unmarshal(e.Value(), &cur); err != nil {
				return fmt.Errorf("rollup bucket %s is corrupt: %w", key, err)
			}
			rev = e.Revision()
		}
		next := cur
		next.ByType = cloneMap(cur.ByType)
		for _, c := range cs {
			if c.seq <= cur.LastSeq {
				continue // in already (a range retried, or applied by another replica)
			}
			next.add(c.c)
			next.addType(c.typ, c.n)
			next.LastSeq = max(next.LastSeq, c.seq)
		}
		if next.LastSeq == cur.LastSeq {
			return nil
		}
		b, err := json.Marshal(next)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = kv.Create(ctx, key, b)
		} else {
			_, err = kv.Update(ctx, key, b, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		return err
	}
	return fmt.Errorf("rollup bucket %s: too much contention", key)
}

func cloneMap(m map[string]int64) map[string]int64 {
	if m == nil {
		return nil
	}
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Point is one bucket of a history.
type Point struct {
	Start time.Time
	Counts
}

// History returns the tenant's buckets from from (inclusive) to to
// (exclusive), every bucket present (zeros included), read with batched
// direct gets (no consumer).
func (r *Rollup) History(ctx context.Context, tenant string, from, to time.Time, g Granularity) ([]Point, error) {
	step, kind := time.Hour, "h"
	if g == Daily {
		step, kind = 24*time.Hour, "d"
	}
	from, to = from.UTC().Truncate(step), to.UTC()
	var points []Point
	index := map[string]int{}
	var subjects []string
	for t := from; t.Before(to); t = t.Add(step) {
		k := bucketKey(tenant, kind, t)
		index["$KV."+RollupBucket+"."+k] = len(points)
		subjects = append(subjects, "$KV."+RollupBucket+"."+k)
		points = append(points, Point{Start: t})
	}
	if _, err := r.bucket(ctx); err != nil {
		return nil, err
	}
	for len(subjects) > 0 {
		n := min(len(subjects), streaming.DirectBatch)
		err := streaming.LastFor(ctx, r.js, "KV_"+RollupBucket, subjects[:n], func(m *jetstream.RawStreamMsg) {
			i, ok := index[m.Subject]
			if !ok || m.Header.Get("KV-Operation") != "" {
				return
			}
			var b storedBucket
			if json.Unmarshal(m.Data, &b) == nil {
				points[i].Counts = b.Counts
			}
		})
		if err != nil {
			return nil, err
		}
		subjects = subjects[n:]
	}
	return points, nil
}

// ParseDay reads a YYYY-MM-DD date (UTC).
func ParseDay(s string) (time.Time, error) {
	t, err := time.Parse("2006-01-02", strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a date YYYY-MM-DD", s)
	}
	return t, nil
}

// TenantTotal is one tenant's use in a month.
type TenantTotal struct {
	TenantID string
	Counts
}

// Top ranks tenants by their use in the month holding month, highest first,
// by "tokens" or "requests". It reads every tenant's monthly bucket (one
// per tenant, the bucket keeps no history) with batched direct gets:
// O(tenants), for operators.
func (r *Rollup) Top(ctx context.Context, month time.Time, by string, limit int) ([]TenantTotal, error) {
	if _, err := r.bucket(ctx); err != nil {
		return nil, err
	}
	suffix := ".m." + month.UTC().Format("200601")
	var all []TenantTotal
	_, _, err := streaming.ReadFrom(ctx, r.js, "KV_"+RollupBucket, "$KV."+RollupBucket+".*"+suffix, 1, 1<<20, func(m *jetstream.RawStreamMsg) bool {
		if m.Header.Get("KV-Operation") != "" {
			return true
		}
		var b storedBucket
		if json.Unmarshal(m.Data, &b) != nil {
			return true
		}
		tenant := strings.TrimSuffix(strings.TrimPrefix(m.Subject, "$KV."+RollupBucket+"."), suffix)
		all = append(all, TenantTotal{TenantID: tenant, Counts: b.Counts})
		return true
	})
	if err != nil {
		return nil, err
	}
	key := func(t TenantTotal) int64 {
		if by == "requests" {
			return t.Requests
		}
		return t.Tokens
	}
	slices.SortFunc(all, func(a, b TenantTotal) int {
		if c := cmp.Compare(key(b), key(a)); c != 0 {
			return c
		}
		return cmp.Compare(a.TenantID, b.TenantID)
	})
	return all[:min(limit, len(all))], nil
}
