package agentese

import (
	"context"
	"time"
)

// time.past: what the tenant has done, summarised: totals since the tenant's
// first invocation in this process, and a window over the recent trace.
func init() { registerBuiltin(newTimePast) }

func newTimePast(Deps) *Node {
	return &Node{
		Path:    "time.past",
		Handle:  "time.past",
		Summary: "Your tenant's AGENTESE history in this process, summarised.",
		Common:  []string{"recall"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "Totals: first and last invocation, counts by context, top nodes and aspects, tokens.", Run: pastManifest},
			{Name: "recall", Doc: "What happened in the last N minutes (from the recent trace).", Run: pastRecall,
				Kwargs: []Kwarg{{Name: "minutes", Type: TypeInteger, Ranged: true, Min: 1, Max: 1440, Doc: "default 60"}}},
		},
	}
}

func pastManifest(_ context.Context, c *Call) (Outcome, error) {
	t := traceOf(c).totals()
	return Outcome{Value: obj{
		"first_seen":  ts(t.First),
		"last_seen":   ts(t.Last),
		"invocations": integer(t.Total),
		"errors":      integer(t.Errors),
		"tokens_used": integer(t.Tokens),
		"by_context":  countsValue(t.ByContext).V(),
		"top_nodes":   topCounts(t.ByNode, 5, "node"),
		"top_aspects": topCounts(t.ByAspect, 5, "path"),
	}.V()}, nil
}

func pastRecall(_ context.Context, c *Call) (Outcome, error) {
	minutes := c.Args.Int("minutes", 60)
	since := c.Now().Add(-time.Duration(minutes) * time.Minute)
	es := traceOf(c).recent(TraceCapacity, func(e traceEntry) bool { return !e.At.Before(since) })
	outcomes := map[string]int{}
	for _, e := range es {
		outcomes[e.Outcome]++
	}
	return Outcome{Value: obj{
		"since":       ts(since),
		"minutes":     integer(minutes),
		"invocations": integer(len(es)),
		"by_outcome":  countsValue(outcomes).V(),
		"entries":     entriesValue(es),
		"complete":    boolean(len(es) < TraceCapacity),
	}.V()}, nil
}
