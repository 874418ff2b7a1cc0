package agentese

import (
	"context"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// genericBase returns the registry's implementation of a base aspect a node
// does not implement itself (witness, affordances).
func genericBase(name string) *Aspect {
	if name == AspectWitness {
		return &Aspect{
			Name: AspectWitness,
			Doc:  "What this node has witnessed: the caller's tenant's recent invocations of it in this process, newest first.",
			Kwargs: []Kwarg{{Name: "limit", Type: TypeInteger, Ranged: true, Min: 1, Max: TraceCapacity,
				Doc: "how many invocations to return (default 10)"}},
			Run: runWitness,
		}
	}
	return &Aspect{
		Name: AspectAffordances,
		Doc:  "The aspects this node affords the observer's archetype, with whether each mutates or streams and the kwargs it takes.",
		Run:  runAffordances,
	}
}

func runWitness(_ context.Context, c *Call) (Outcome, error) {
	node := c.node.decl.Path
	prefix := node + "."
	tl := traceOf(c)
	entries := tl.recent(c.Args.Int("limit", 10), func(e traceEntry) bool {
		return strings.HasPrefix(e.Path, prefix) && strings.Count(e.Path[len(prefix):], ".") == 0
	})
	t := tl.totals()
	return Outcome{Value: obj{
		"path":        str(node),
		"observer":    str(c.Archetype),
		"invocations": integer(t.ByNode[node]),
		"recent":      entriesValue(entries),
		"note":        str("Invocations by your tenant in this server process; the trace is in memory and bounded."),
	}.V()}, nil
}

func runAffordances(_ context.Context, c *Call) (Outcome, error) {
	names := c.node.afford[c.Archetype]
	vs := make([]*structpb.Value, len(names))
	for i, name := range names {
		vs[i] = aspectValue(aspectInfo(c.node.aspects[name]))
	}
	return Outcome{Value: obj{
		"path":        str(c.node.decl.Path),
		"archetype":   str(c.Archetype),
		"affordances": strs(names),
		"aspects":     array(vs...),
	}.V()}, nil
}

// aspectValue renders an aspect's contract.
func aspectValue(a AspectInfo) *structpb.Value {
	kw := make([]string, len(a.Kwargs))
	for i, k := range a.Kwargs {
		kw[i] = k.Describe()
	}
	return obj{
		"name": str(a.Name), "doc": str(a.Doc), "mutates": boolean(a.Mutates),
		"streams": boolean(a.Streams), "kwargs": strs(kw),
	}.V()
}
