package agentese

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// self.semaphore: flags an agent raises when it needs a human (a decision,
// an approval, an answer) and lowers when the human has acted.
func init() { registerBuiltin(newSelfSemaphore) }

const (
	semaphoreSlot = "self.semaphore"
	semaphoreMax  = 32
)

type semaphores struct {
	mu     sync.Mutex
	raised []flag
}

type flag struct {
	name, reason, archetype string
	at                      time.Time
}

func semaphoresOf(c *Call) *semaphores {
	return slotOf(c.tenant(), semaphoreSlot, func() *semaphores { return &semaphores{} })
}

func newSelfSemaphore(Deps) *Node {
	name := Kwarg{Name: "name", Type: TypeString, Required: true, MaxLen: 64, Doc: "the flag's name"}
	return &Node{
		Path:    "self.semaphore",
		Handle:  "self.semaphore",
		Summary: "Flags raised for a human to act on, per tenant.",
		Common:  []string{"raise", "lower"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "The raised flags, oldest first, with how long each has waited.", Run: semaphoreManifest},
			{Name: "raise", Doc: "Raise a flag (or update its reason).", Mutates: true, Run: semaphoreRaise,
				Kwargs: []Kwarg{name, {Name: "reason", Type: TypeString, MaxLen: 512, Doc: "what the human must do"}}},
			{Name: "lower", Doc: "Lower a flag.", Mutates: true, Run: semaphoreLower, Kwargs: []Kwarg{name}},
		},
	}
}

func semaphoreManifest(_ context.Context, c *Call) (Outcome, error) {
	s := semaphoresOf(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := c.Now()
	vs := make([]*structpb.Value, len(s.raised))
	for i, f := range s.raised {
		vs[i] = obj{
			"name": str(f.name), "reason": str(f.reason), "archetype": str(f.archetype), "raised_at": ts(f.at),
			"waiting_seconds": integer(int(now.Sub(f.at).Seconds())),
		}.V()
	}
	return Outcome{Value: obj{"raised": array(vs...), "count": integer(len(s.raised)), "capacity": integer(semaphoreMax)}.V()}, nil
}

func semaphoreRaise(_ context.Context, c *Call) (Outcome, error) {
	s := semaphoresOf(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	name := strings.TrimSpace(c.Args.Str("name"))
	f := flag{name: name, reason: c.Args.Str("reason"), archetype: c.Archetype, at: c.Now()}
	if i := slices.IndexFunc(s.raised, func(f flag) bool { return f.name == name }); i >= 0 {
		s.raised[i].reason = f.reason
		return Outcome{Value: obj{"name": str(name), "raised": boolean(true), "updated": boolean(true), "raised_at": ts(s.raised[i].at)}.V()}, nil
	}
	if len(s.raised) >= semaphoreMax {
		return Outcome{}, newError(KindPrecondition, fmt.Sprintf("%d flags are already raised, the most kept; lower one first.", semaphoreMax))
	}
	s.raised = append(s.raised, f)
	return Outcome{Value: obj{"name": str(name), "raised": boolean(true), "updated": boolean(false), "raised_at": ts(f.at)}.V()}, nil
}

func semaphoreLower(_ context.Context, c *Call) (Outcome, error) {
	s := semaphoresOf(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	name := strings.TrimSpace(c.Args.Str("name"))
	i := slices.IndexFunc(s.raised, func(f flag) bool { return f.name == name })
	if i < 0 {
		return Outcome{Value: obj{"name": str(name), "lowered": boolean(false), "note": str("no such flag was raised")}.V()}, nil
	}
	waited := c.Now().Sub(s.raised[i].at)
	s.raised = slices.Delete(s.raised, i, i+1)
	return Outcome{Value: obj{"name": str(name), "lowered": boolean(true), "waited_seconds": integer(int(waited.Seconds()))}.V()}, nil
}
