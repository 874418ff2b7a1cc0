package billing

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestKeyOf(t *testing.T) {
	t.Parallel()
	id := EventID("base", TypeAPIRequest, 0)
	if k := keyOf(id); fmt.Sprintf("%x", k[:]) != id {
		t.Errorf("a 32-hex event id is its own key: %x vs %s", k, id)
	}
	a, b := "ev-1", "ev-1"
	if keyOf("ev-1") == keyOf("ev-2") || keyOf(a) != keyOf(b) {
		t.Error("other ids are keyed by their digest")
	}
}

// The index forgets entries once they are older than the window before the
// newest, or the oldest beyond its maximum; an entry set again lives on
// from its new time; an overlay changes nothing until committed.
func TestIDIndex(t *testing.T) {
	t.Parallel()
	sec := int64(time.Second)
	k := func(i int) idKey { return keyOf(fmt.Sprint("id-", i)) }
	tests := []struct {
		name  string
		max   int
		puts  []int         // ids put at times 0, 1, 2, … seconds
		again map[int]int64 // id → a later time it is set again
		now   int64
		in    []int
		out   []int
		early float64
	}{
		{name: "within the window", max: 100, puts: []int{1, 2, 3}, now: 5 * sec, in: []int{1, 2, 3}},
		{name: "older than the window", max: 100, puts: []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, now: 12 * sec, in: []int{12, 5, 3}, out: []int{1, 2}},
		{name: "set again lives on", max: 100, puts: []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, again: map[int]int64{1: 9 * sec}, now: 16 * sec, in: []int{1, 11}, out: []int{2, 3}},
		{name: "the maximum drops the oldest early", max: 3, puts: []int{1, 2, 3, 4, 5}, now: 5 * sec, in: []int{3, 4, 5}, out: []int{1, 2}, early: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			x := newIDIndex(10*time.Second, tc.max)
			reg := prometheus.NewRegistry()
			x.early = newRollupMetrics(reg).early
			for i, id := range tc.puts {
				at := int64(i) * sec
				for again, when := range tc.again {
					if when <= at && when > at-sec {
						x.put(k(again), idEntry{seq: uint64(100 + again), at: when})
					}
				}
				x.put(k(id), idEntry{seq: uint64(id), at: at})
			}
			x.evict(tc.now)
			for _, id := range tc.in {
				if _, ok := x.get(k(id), tc.now); !ok {
					t.Errorf("id %d forgotten at %ds", id, tc.now/sec)
				}
			}
			for _, id := range tc.out {
				if _, ok := x.get(k(id), tc.now); ok {
					t.Errorf("id %d still known at %ds", id, tc.now/sec)
				}
				if _, ok := x.m[k(id)]; ok {
					t.Errorf("id %d still held in memory", id)
				}
			}
			if got := metric(t, reg, "kgents_usage_rollup_dedupe_evicted_early_total", nil); got != tc.early {
				t.Errorf("dropped early %v, want %v", got, tc.early)
			}
			if x.fifo.end-x.head < len(x.m) {
				t.Errorf("the fifo lists %d entries for %d ids", x.fifo.end-x.head, len(x.m))
			}
		})
	}

	t.Run("overlay", func(t *testing.T) {
		t.Parallel()
		x := newIDIndex(10*time.Second, 100)
		x.put(k(1), idEntry{seq: 1, at: 0})
		ov := x.overlay()
		ov.put(k(2), idEntry{seq: 2, at: sec})
		ov.put(k(1), idEntry{seq: 1, at: sec, refunded: true})
		if e, ok := ov.get(k(1), sec); !ok || !e.refunded {
			t.Errorf("the overlay's own decision is what it reads: %+v %v", e, ok)
		}
		ov.commit()
		ov.rollback() // after commit: nothing to undo
		if e, ok := x.get(k(1), sec); !ok || !e.refunded || x.len() != 2 {
			t.Errorf("after commit: %+v %v, %d ids", e, ok, x.len())
		}
	})

	// The same across the fifo's chunks: a range that evicts whole chunks'
	// worth of ids and lists new ones past a chunk's end, rolled back.
	t.Run("rollback across chunks", func(t *testing.T) {
		t.Parallel()
		const window = 2 * fifoChunk
		x := newIDIndex(time.Duration(window), 10*fifoChunk)
		for i := range 3 * fifoChunk {
			x.put(k(i), idEntry{seq: uint64(i), at: int64(i)})
		}
		wantM := maps.Clone(x.m)
		wantFifo, wantHead := x.fifo.from(x.head), x.head
		ov := x.overlay()
		for i := 3 * fifoChunk; i < 5*fifoChunk+7; i++ {
			ov.put(k(i), idEntry{seq: uint64(i), at: int64(i)})
		}
		if x.len() > window+1 {
			t.Fatalf("%d ids held in an overlay, want the window's %d", x.len(), window+1)
		}
		ov.rollback()
		if !maps.Equal(x.m, wantM) {
			t.Errorf("entries after rollback: %d, want %d (or different ones)", len(x.m), len(wantM))
		}
		if got := x.fifo.from(x.head); !slices.Equal(got, wantFifo) || x.head != wantHead {
			t.Errorf("fifo after rollback: %d entries at %d, want %d at %d", len(got), x.head, len(wantFifo), wantHead)
		}
		// Committed, the consumed chunks are freed.
		ov = x.overlay()
		ov.put(k(5*fifoChunk), idEntry{seq: 1, at: 5 * fifoChunk})
		ov.commit()
		if x.fifo.first < 2*fifoChunk || x.fifo.first > x.head {
			t.Errorf("after commit the fifo starts at %d, head at %d: consumed chunks not freed", x.fifo.first, x.head)
		}
	})

	// A rolled-back overlay leaves the index exactly as it was, evictions
	// by age and by the maximum included, and the early count untouched.
	t.Run("rollback", func(t *testing.T) {
		t.Parallel()
		x := newIDIndex(10*time.Second, 4)
		reg := prometheus.NewRegistry()
		x.early = newRollupMetrics(reg).early
		for i := range 4 {
			x.put(k(i), idEntry{seq: uint64(i), at: int64(i) * sec})
		}
		wantM := maps.Clone(x.m)
		wantFifo, wantHead := x.fifo.from(x.head), x.head

		ov := x.overlay()
		ov.put(k(1), idEntry{seq: 11, at: 4 * sec, refunded: true}) // changed
		ov.put(k(7), idEntry{seq: 7, at: 5 * sec})                  // new: the maximum drops k(0) early
		ov.put(k(8), idEntry{seq: 8, at: 13 * sec})                 // k(2), k(3) out of the window
		if _, ok := x.get(k(0), 5*sec); ok {
			t.Fatal("the open overlay's eviction is not in effect")
		}
		ov.rollback()
		if !maps.Equal(x.m, wantM) {
			t.Errorf("entries after rollback: %v, want %v", x.m, wantM)
		}
		if got := x.fifo.from(x.head); !slices.Equal(got, wantFifo) || x.head != wantHead {
			t.Errorf("fifo after rollback: %v at %d, want %v at %d", got, x.head, wantFifo, wantHead)
		}
		if got := metric(t, reg, "kgents_usage_rollup_dedupe_evicted_early_total", nil); got != 0 {
			t.Errorf("a rolled-back eviction counted: %v", got)
		}
		// An overlay left open (a range that panicked) is undone by the next.
		stale := x.overlay()
		stale.put(k(9), idEntry{seq: 9, at: 5 * sec})
		ov = x.overlay()
		if _, ok := x.get(k(9), 5*sec); ok || !maps.Equal(x.m, wantM) {
			t.Errorf("a stale overlay's decisions survived the next one: %v", x.m)
		}
		ov.rollback()
		// The same decisions again, committed, count once.
		ov = x.overlay()
		ov.put(k(7), idEntry{seq: 7, at: 5 * sec})
		ov.commit()
		if got := metric(t, reg, "kgents_usage_rollup_dedupe_evicted_early_total", nil); got != 1 {
			t.Errorf("evicted early after commit: %v, want 1", got)
		}
	})
}

// BenchmarkIDIndex measures what the rollup's memory of ids costs: a put
// (the rollup's per-event work besides reading) and the heap per id held,
// with the window full (every put evicts one).
func BenchmarkIDIndex(b *testing.B) {
	const held = 1 << 20
	x := newIDIndex(time.Duration(held), held*2)
	keys := make([]idKey, 1<<16)
	for i := range keys {
		keys[i] = keyOf(EventID("bench", TypeAPIRequest, i))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range held {
		k := keys[i%len(keys)]
		k[0], k[1], k[2] = byte(i), byte(i>>8), byte(i>>16)
		x.put(k, idEntry{seq: uint64(i), at: int64(i)})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perID := float64(after.HeapAlloc-before.HeapAlloc) / float64(x.len())
	b.ResetTimer()
	for i := range b.N {
		k := keys[i%len(keys)]
		n := held + i
		k[0], k[1], k[2], k[3] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
		x.put(k, idEntry{seq: uint64(n), at: int64(n)})
	}
	b.ReportMetric(perID, "bytes/id")
}

// BenchmarkIDIndexLongestPut reports the longest single put with the window
// full at 4 million ids (USAGE_DEDUPE_MAX_IDS's default): the rollup's
// goroutine cannot yield inside a put, so that is how long it can hold a
// processor from the calls being served.
func BenchmarkIDIndexLongestPut(b *testing.B) {
	const held = DefaultDedupeMaxIDs
	x := newIDIndex(time.Duration(held), held*2)
	var k idKey
	put := func(n int) {
		k[0], k[1], k[2], k[3] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
		x.put(k, idEntry{seq: uint64(n), at: int64(n)})
	}
	for i := range held {
		put(i)
	}
	var longest time.Duration
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		put(held + i)
		longest = max(longest, time.Since(start))
	}
	b.ReportMetric(float64(longest.Microseconds()), "longest-put-µs")
}
