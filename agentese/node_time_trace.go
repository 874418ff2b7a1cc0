package agentese

import (
	"context"
	"strings"
)

// time.trace: the caller's tenant's recent invocations in this process,
// newest first (a bounded ring; kwargs are never recorded).
func init() { registerBuiltin(newTimeTrace) }

func newTimeTrace(Deps) *Node {
	return &Node{
		Path:    "time.trace",
		Handle:  "time.trace",
		Summary: "Recent AGENTESE invocations of your tenant in this server process.",
		Common:  []string{"recent"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "The trace: capacity, how many are held, the 20 most recent.", Run: traceManifest},
			{Name: "recent", Doc: "Recent invocations, optionally only those whose path starts with a prefix.", Run: traceRecent,
				Kwargs: []Kwarg{
					{Name: "limit", Type: TypeInteger, Ranged: true, Min: 1, Max: TraceCapacity, Doc: "default 20"},
					{Name: "prefix", Type: TypeString, MaxLen: MaxPathLen, Doc: "e.g. world.house"},
				}},
		},
	}
}

func traceManifest(_ context.Context, c *Call) (Outcome, error) {
	tl := traceOf(c)
	t := tl.totals()
	return Outcome{Value: obj{
		"capacity": integer(TraceCapacity),
		"held":     integer(t.Held),
		"recorded": integer(t.Total),
		"recent":   entriesValue(tl.recent(20, nil)),
	}.V()}, nil
}

func traceRecent(_ context.Context, c *Call) (Outcome, error) {
	prefix := c.Args.Str("prefix")
	es := traceOf(c).recent(c.Args.Int("limit", 20), func(e traceEntry) bool {
		return strings.HasPrefix(e.Path, prefix)
	})
	return Outcome{Value: obj{"prefix": str(prefix), "entries": entriesValue(es)}.V()}, nil
}
