package agentese

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// void.gratitude: a per-tenant ledger of thanks.
func init() { registerBuiltin(newVoidGratitude) }

const (
	gratitudeSlot   = "void.gratitude"
	gratitudeRecent = 16
)

type gratitudeLedger struct {
	mu     sync.Mutex
	total  int
	recent []thanks
}

type thanks struct {
	to, reason, archetype string
	at                    time.Time
}

func gratitudeOf(c *Call) *gratitudeLedger {
	return slotOf(c.tenant(), gratitudeSlot, func() *gratitudeLedger { return &gratitudeLedger{} })
}

func newVoidGratitude(Deps) *Node {
	return &Node{
		Path:    "void.gratitude",
		Handle:  "void.gratitude",
		Summary: "A ledger of thanks given, per tenant.",
		Common:  []string{"thank"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "The ledger: how many thanks, and the most recent.", Run: gratitudeManifest},
			{Name: "thank", Doc: "Record thanks.", Mutates: true, Run: gratitudeThank, Kwargs: []Kwarg{
				{Name: "to", Type: TypeString, Required: true, MaxLen: 128, Doc: "who or what is thanked"},
				{Name: "for", Type: TypeString, MaxLen: 512, Doc: "what for"},
			}},
		},
	}
}

func gratitudeManifest(_ context.Context, c *Call) (Outcome, error) {
	g := gratitudeOf(c)
	g.mu.Lock()
	defer g.mu.Unlock()
	vs := make([]*structpb.Value, 0, len(g.recent))
	for i := len(g.recent) - 1; i >= 0; i-- {
		t := g.recent[i]
		vs = append(vs, obj{"to": str(t.to), "for": str(t.reason), "archetype": str(t.archetype), "at": ts(t.at)}.V())
	}
	return Outcome{Value: obj{
		"summary": str(fmt.Sprintf("%d thanks given.", g.total)),
		"total":   integer(g.total),
		"recent":  array(vs...),
	}.V()}, nil
}

func gratitudeThank(_ context.Context, c *Call) (Outcome, error) {
	g := gratitudeOf(c)
	g.mu.Lock()
	defer g.mu.Unlock()
	t := thanks{to: c.Args.Str("to"), reason: c.Args.Str("for"), archetype: c.Archetype, at: c.Now()}
	g.total++
	g.recent = pushBounded(g.recent, t, gratitudeRecent)
	note := fmt.Sprintf("Thanked %s.", quote(t.to))
	if t.reason != "" {
		note = fmt.Sprintf("Thanked %s for %s.", quote(t.to), quote(t.reason))
	}
	return Outcome{Value: obj{"total": integer(g.total), "note": str(note), "at": ts(t.at)}.V()}, nil
}
