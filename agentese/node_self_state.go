package agentese

import (
	"context"
	"strings"
)

// self.state: everything AGENTESE holds for the tenant in this process, in
// one view; admins may reset it.
func init() { registerBuiltin(newSelfState) }

func newSelfState(Deps) *Node {
	return &Node{
		Path:        "self.state",
		Handle:      "self.state",
		Summary:     "The tenant's in-memory AGENTESE state at a glance.",
		ByArchetype: map[string][]string{"admin": {"reset"}},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "Counts of memory, flags, thanks, schedule, trace; entropy; soul mode; world revisions.", Run: stateManifest},
			{Name: "reset", Doc: "Forget all of the tenant's AGENTESE state in this process (admin archetype).", Mutates: true, Run: stateReset},
		},
	}
}

// stateValue reads every stateful slot without creating any.
func stateValue(c *Call) obj {
	tenant := c.tenant()
	o := obj{"entropy_remaining": num(entropyInitial), "soul_mode": str(soulDefaultMode)}
	counts := map[string]int{"memory_entries": 0, "flags_raised": 0, "thanks": 0, "scheduled": 0, "trace_held": 0}
	if m := peekSlot[memoryStore](tenant, memorySlot); m != nil {
		m.mu.Lock()
		counts["memory_entries"] = len(m.entries)
		m.mu.Unlock()
	}
	if s := peekSlot[semaphores](tenant, semaphoreSlot); s != nil {
		s.mu.Lock()
		counts["flags_raised"] = len(s.raised)
		s.mu.Unlock()
	}
	if g := peekSlot[gratitudeLedger](tenant, gratitudeSlot); g != nil {
		g.mu.Lock()
		counts["thanks"] = g.total
		g.mu.Unlock()
	}
	if s := peekSlot[schedule](tenant, futureSlot); s != nil {
		s.mu.Lock()
		counts["scheduled"] = len(s.upcoming(c.Now()))
		s.mu.Unlock()
	}
	if t := peekSlot[traceLog](tenant, traceSlot); t != nil {
		counts["trace_held"] = t.totals().Held
	}
	if p := peekSlot[entropyPool](tenant, entropySlot); p != nil {
		p.mu.Lock()
		p.refill(c.Now())
		o["entropy_remaining"] = num(round(p.remaining, 2))
		p.mu.Unlock()
	}
	if m := peekSlot[soulMemo](tenant, soulSlot); m != nil {
		m.mu.Lock()
		o["soul_mode"] = str(m.mode)
		m.mu.Unlock()
	}
	for k, v := range counts {
		o[k] = integer(v)
	}
	world := obj{}
	for _, p := range c.reg.nodePaths {
		if !strings.HasPrefix(p, ContextWorld+".") {
			continue
		}
		if w := peekSlot[worldState](tenant, p); w != nil {
			w.mu.Lock()
			world[strings.TrimPrefix(p, ContextWorld+".")] = obj{"revision": integer(w.revision), "demolished": boolean(w.demolished)}.V()
			w.mu.Unlock()
		}
	}
	o["world"] = world.V()
	return o
}

func stateManifest(_ context.Context, c *Call) (Outcome, error) {
	return Outcome{Value: stateValue(c).V()}, nil
}

func stateReset(_ context.Context, c *Call) (Outcome, error) {
	n := c.tenant().clear()
	return Outcome{Value: obj{
		"reset": boolean(true), "cleared": integer(n),
		"note": str("Memory, flags, thanks, schedule, entropy, world state, verdicts and trace of this tenant were forgotten in this process."),
	}.V()}, nil
}
