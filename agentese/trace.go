package agentese

import (
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// TraceCapacity is how many recent invocations a tenant's trace keeps.
const TraceCapacity = 64

const traceSlot = "time.trace"

// traceEntry is one recorded invocation. No kwargs are kept: they may hold
// anything the caller typed.
type traceEntry struct {
	At        time.Time
	Path      string
	Archetype string
	// Outcome is "ok" or the failure kind ("not_afforded", ...).
	Outcome  string
	Tokens   int
	Cached   bool
	Mutated  bool
	Streamed bool
}

// traceLog is a tenant's invocation history in this process: a ring of the
// most recent entries plus running totals. Totals per node and aspect are
// keyed only by registered paths, so they are bounded by the registry.
type traceLog struct {
	mu          sync.Mutex
	ring        [TraceCapacity]traceEntry
	next, n     int
	total       int
	errors      int
	tokens      int
	first, last time.Time
	byContext   map[string]int
	byNode      map[string]int
	byAspect    map[string]int
}

func newTraceLog() *traceLog {
	return &traceLog{byContext: map[string]int{}, byNode: map[string]int{}, byAspect: map[string]int{}}
}

// add records an entry. node is the registered node path ("" when the path
// named no registered node).
func (t *traceLog) add(e traceEntry, node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ring[t.next] = e
	t.next = (t.next + 1) % TraceCapacity
	t.n = min(t.n+1, TraceCapacity)
	t.total++
	t.tokens += e.Tokens
	if e.Outcome != "ok" {
		t.errors++
	}
	if t.first.IsZero() {
		t.first = e.At
	}
	t.last = e.At
	ctx, _, _ := strings.Cut(e.Path, ".")
	t.byContext[ctx]++
	if node != "" {
		t.byNode[node]++
		t.byAspect[e.Path]++
	}
}

// recent returns up to limit entries, newest first, that keep says to keep.
func (t *traceLog) recent(limit int, keep func(traceEntry) bool) []traceEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]traceEntry, 0, min(limit, t.n))
	for i := 1; i <= t.n && len(out) < limit; i++ {
		e := t.ring[(t.next-i+TraceCapacity)%TraceCapacity]
		if keep == nil || keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// traceTotals is a consistent copy of the running totals.
type traceTotals struct {
	Total, Errors, Tokens, Held int
	First, Last                 time.Time
	ByContext, ByNode, ByAspect map[string]int
}

func (t *traceLog) totals() traceTotals {
	t.mu.Lock()
	defer t.mu.Unlock()
	return traceTotals{
		Total: t.total, Errors: t.errors, Tokens: t.tokens, Held: t.n, First: t.first, Last: t.last,
		ByContext: cloneCounts(t.byContext), ByNode: cloneCounts(t.byNode), ByAspect: cloneCounts(t.byAspect),
	}
}

func cloneCounts(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// traceOf returns the caller's trace.
func traceOf(c *Call) *traceLog { return slotOf(c.tenant(), traceSlot, newTraceLog) }

// entryValue renders an entry.
func entryValue(e traceEntry) obj {
	return obj{
		"at": ts(e.At), "path": str(e.Path), "archetype": str(e.Archetype), "outcome": str(e.Outcome),
		"tokens_used": integer(e.Tokens), "cached": boolean(e.Cached), "mutated": boolean(e.Mutated),
		"streamed": boolean(e.Streamed),
	}
}

// entriesValue renders entries as a list.
func entriesValue(es []traceEntry) *structpb.Value {
	vs := make([]*structpb.Value, len(es))
	for i, e := range es {
		vs[i] = entryValue(e).V()
	}
	return array(vs...)
}

// countsValue renders a count map as an object.
func countsValue(m map[string]int) obj {
	o := obj{}
	for k, v := range m {
		o[k] = integer(v)
	}
	return o
}

// topCounts returns the n largest counts as [{<label>, count}], ties by name.
func topCounts(m map[string]int, n int, label string) *structpb.Value {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	out := make([]*structpb.Value, 0, min(n, len(keys)))
	for _, k := range keys[:min(n, len(keys))] {
		out = append(out, obj{label: str(k), "count": integer(m[k])}.V())
	}
	return array(out...)
}
