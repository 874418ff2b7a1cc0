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
	// head is the position of the first listing not yet consumed.
	fifo idFIFO
	head int
	// early counts entries dropped by the max before their window ended.
	early prometheus.Counter
	// open is the overlay whose decisions the index holds uncommitted (nil:
	// none); while one is open, every change is journaled so it can be
	// undone, and the fifo is not compacted.
	open *overlay
	// spare is the last closed overlay's journal, emptied, for the next.
	spare []undoEntry
}

func newIDIndex(window time.Duration, max int) *idIndex {
	return &idIndex{window: int64(window), max: max, m: map[idKey]idEntry{},
		early: prometheus.NewCounter(prometheus.CounterOpts{Name: "unregistered"})}
}

func (x *idIndex) len() int { return len(x.m) }

// get returns k's entry if it was set within the window before now.
func (x *idIndex) get(k idKey, now int64) (idEntry, bool) {
	found := x.find(k)
	return found.within(now, x.window)
}

// stored is a key's map entry as found, whatever its age: what a put that
// replaces it journals.
type stored struct {
	e   idEntry
	had bool
}

func (x *idIndex) find(k idKey) stored {
	e, had := x.m[k]
	return stored{e: e, had: had}
}

// within is the entry if it was set within window before now.
func (s stored) within(now, window int64) (idEntry, bool) {
	if !s.had || s.e.at < now-window {
		return idEntry{}, false
	}
	return s.e, true
}

func (x *idIndex) put(k idKey, e idEntry) { x.replace(k, e, x.find(k)) }

// replace is put when k's entry was just found (the map is large, and each
// lookup a likely cache miss: a new id costs two, not four).
func (x *idIndex) replace(k idKey, e idEntry, was stored) {
	if o := x.open; o != nil {
		o.undo = append(o.undo, undoEntry{k: k, prev: was.e, had: was.had})
	}
	x.m[k] = e
	x.fifo.push(fifoEntry{k: k, at: e.at})
	x.evict(e.at)
}

// del forgets k, journaled like replace.
func (x *idIndex) del(k idKey) {
	if o := x.open; o != nil {
		if prev, had := x.m[k]; had {
			o.undo = append(o.undo, undoEntry{k: k, prev: prev, had: true})
		}
	}
	delete(x.m, k)
}

// evict forgets the entries older than the window before now, and the
// oldest beyond max.
func (x *idIndex) evict(now int64) {
	cutoff := now - x.window
	for x.head < x.fifo.end {
		f := x.fifo.at(x.head)
		if f.at >= cutoff && len(x.m) <= x.max {
			// Its entry was set then or later: within the window, and
			// there is room. (A listing set again since is skipped once
			// it ages out.)
			break
		}
		e, ok := x.m[f.k]
		switch {
		case !ok || e.at != f.at:
			// Set again since (listed further on), or gone.
		case e.at < cutoff:
			x.del(f.k)
		case len(x.m) > x.max:
			x.del(f.k)
			if x.open != nil {
				x.open.early++
			} else {
				x.early.Inc()
			}
		default:
			x.compact()
			return
		}
		x.head++
	}
	x.compact()
}

// compact frees the fifo's consumed front (not while an overlay is open:
// its rollback restores the fifo by position).
func (x *idIndex) compact() {
	if x.open == nil {
		x.fifo.release(x.head)
	}
}

// overlay is a range's decisions, which a range that fails must not keep:
// it is decided again from the same index. The decisions go into the index
// at once (a range's ids are mostly new, and one map is half the lookups of
// two), with a journal of what they replaced; rollback undoes them, commit
// keeps them. At most one overlay is open at a time.
type overlay struct {
	x       *idIndex
	undo    []undoEntry
	fifoLen int
	head    int
	early   float64
	closed  bool
}

// undoEntry is a map entry as it was before an open overlay changed it.
type undoEntry struct {
	k    idKey
	prev idEntry
	had  bool
}

func (x *idIndex) overlay() *overlay {
	if x.open != nil {
		// Left open by a range that never finished (every caller defers
		// rollback, so only a panic gets here): its decisions are undone.
		x.open.rollback()
	}
	o := &overlay{x: x, undo: x.spare[:0], fifoLen: x.fifo.end, head: x.head}
	x.spare = nil
	x.open = o
	return o
}

func (o *overlay) get(k idKey, now int64) (idEntry, bool) { return o.x.get(k, now) }

func (o *overlay) put(k idKey, e idEntry) { o.x.put(k, e) }

func (o *overlay) find(k idKey) stored { return o.x.find(k) }

func (o *overlay) replace(k idKey, e idEntry, was stored) { o.x.replace(k, e, was) }

// close ends the overlay, keeping its journal's memory for the next.
func (o *overlay) close() {
	o.closed, o.x.open = true, nil
	o.x.spare, o.undo = o.undo[:0], nil
}

// commit keeps the decisions.
func (o *overlay) commit() {
	if o.closed {
		return
	}
	o.close()
	o.x.early.Add(o.early)
	o.x.compact()
}

// rollback undoes the decisions (a no-op once committed), so the index is
// as it was when the overlay opened.
func (o *overlay) rollback() {
	if o.closed {
		return
	}
	for i := len(o.undo) - 1; i >= 0; i-- {
		u := o.undo[i]
		if u.had {
			o.x.m[u.k] = u.prev
		} else {
			delete(o.x.m, u.k)
		}
	}
	o.x.fifo.truncate(o.fifoLen)
	o.x.head = o.head
	o.close()
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
