package billing

import (
	"crypto/sha256"
	"encoding/hex"
	"github.com/kgents/kgents-go/telemetry"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The rollup's memory of event ids: which ids of the dedupe window counted
// (at which stream sequence) or were refunded. Every replica keeps its own,
// built from the stream in sequence order, so all hold the same entries.

// idKey is an event id in 16 bytes: the id itself when it is 32 hex
// characters (billing.EventID), otherwise the first 16 bytes of its SHA-256.
type idKey [16]byte

func keyOf(id string) idKey {
	var k idKey
	if len(id) == 2*len(k) {
		if _, err := hex.Decode(k[:], []byte(id)); err == nil {
			return k
		}
	}
	sum := sha256.Sum256([]byte(id))
	copy(k[:], sum[:])
	return k
}

// idEntry is what the rollup knows of an id.
type idEntry struct {
	seq      uint64 // the store that counted it (or, refunded unknown, the dead letter)
	at       int64  // stream time (Unix ns) of the message that last set it
	refunded bool   // a dead letter took it back
}

// fifoEntry is an id in the order its entry was set.
type fifoEntry struct {
	k  idKey
	at int64
}

// idIndex holds the entries of the last window, at most max of them.
type idIndex struct {
	window int64
	max    int
	m      map[idKey]idEntry
	// fifo lists entries in the order they were set; an entry set again
	// is listed again, and its older listing is skipped when it comes up.
	fifo []fifoEntry
	head int
	// early counts entries dropped by the max before their window ended.
	early prometheus.Counter
}

func newIDIndex(window time.Duration, max int) *idIndex {
	return &idIndex{window: int64(window), max: max, m: map[idKey]idEntry{},
		early: prometheus.NewCounter(prometheus.CounterOpts{Name: "unregistered"})}
}

func (x *idIndex) len() int { return len(x.m) }

// get returns k's entry if it was set within the window before now.
func (x *idIndex) get(k idKey, now int64) (idEntry, bool) {
	e, ok := x.m[k]
	if !ok || e.at < now-x.window {
		return idEntry{}, false
	}
	return e, true
}

func (x *idIndex) put(k idKey, e idEntry) {
	x.m[k] = e
	x.fifo = append(x.fifo, fifoEntry{k: k, at: e.at})
	x.evict(e.at)
}

// evict forgets the entries older than the window before now, and the
// oldest beyond max.
func (x *idIndex) evict(now int64) {
	cutoff := now - x.window
	for x.head < len(x.fifo) {
		f := x.fifo[x.head]
		e, ok := x.m[f.k]
		switch {
		case !ok || e.at != f.at:
			// Set again since (listed further on), or gone.
		case e.at < cutoff:
			delete(x.m, f.k)
		case len(x.m) > x.max:
			delete(x.m, f.k)
			x.early.Inc()
		default:
			x.compact()
			return
		}
		x.fifo[x.head] = fifoEntry{}
		x.head++
	}
	x.compact()
}

// compact drops the fifo's consumed front once it is most of the slice.
func (x *idIndex) compact() {
	if x.head >= 1024 && x.head >= len(x.fifo)/2 {
		n := copy(x.fifo, x.fifo[x.head:])
		x.fifo = x.fifo[:n]
		x.head = 0
	}
}

// overlay is a range's decisions, kept apart until the range is applied:
// a range that fails is decided again from the same index.
type overlay struct {
	x     *idIndex
	m     map[idKey]idEntry
	order []idKey
}

func (x *idIndex) overlay() *overlay { return &overlay{x: x, m: map[idKey]idEntry{}} }

func (o *overlay) get(k idKey, now int64) (idEntry, bool) {
	if e, ok := o.m[k]; ok {
		if e.at < now-o.x.window {
			return idEntry{}, false
		}
		return e, true
	}
	return o.x.get(k, now)
}

func (o *overlay) put(k idKey, e idEntry) {
	if _, ok := o.m[k]; !ok {
		o.order = append(o.order, k)
	}
	o.m[k] = e
}

// commit moves the decisions into the index, in the order they were taken.
func (o *overlay) commit() {
	for _, k := range o.order {
		o.x.put(k, o.m[k])
	}
	o.m, o.order = nil, nil
}

// rollupMetrics are the rollup's Prometheus metrics.
type rollupMetrics struct {
	ids   prometheus.Gauge
	early prometheus.Counter
}

func newRollupMetrics(reg prometheus.Registerer) *rollupMetrics {
	ids, err1 := telemetry.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kgents_usage_rollup_dedupe_ids",
		Help: "Event ids the usage rollup remembers to recognise copies (USAGE_DEDUPE_WINDOW, at most USAGE_DEDUPE_MAX_IDS).",
	}))
	early, err2 := telemetry.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kgents_usage_rollup_dedupe_evicted_early_total",
		Help: "Event ids forgotten before their dedupe window ended because USAGE_DEDUPE_MAX_IDS was reached: copies of them would be counted twice.",
	}))
	if err1 != nil || err2 != nil {
		// Another collector took the names: count privately.
		return &rollupMetrics{ids: prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"}), early: prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})}
	}
	return &rollupMetrics{ids: ids, early: early}
}
