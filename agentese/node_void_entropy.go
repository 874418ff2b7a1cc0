package agentese

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// void.entropy: the Accursed Share, a per-tenant pool of entropy that
// sips draw from and tithes return to. It refills slowly with time, so a
// drained pool recovers without anyone's help.
func init() { registerBuiltin(newVoidEntropy) }

const (
	entropyInitial       = 100.0
	entropyRefillPerMin  = 1.0
	entropyMaxSip        = 10.0
	entropyMaxTithe      = 100.0
	entropySlot          = "void.entropy"
	entropyPoolSummaryEN = "Entropy Pool (Accursed Share)"
)

type entropyPool struct {
	mu        sync.Mutex
	remaining float64
	draws     int
	tithes    int
	updated   time.Time
}

// refill adds what has regenerated since the last update.
func (p *entropyPool) refill(now time.Time) {
	if p.updated.IsZero() {
		p.remaining, p.updated = entropyInitial, now
		return
	}
	if elapsed := now.Sub(p.updated); elapsed > 0 {
		p.remaining = math.Min(entropyInitial, p.remaining+elapsed.Minutes()*entropyRefillPerMin)
		p.updated = now
	}
}

func entropyOf(c *Call) *entropyPool {
	p := slotOf(c.tenant(), entropySlot, func() *entropyPool { return &entropyPool{} })
	p.mu.Lock()
	p.refill(c.Now())
	p.mu.Unlock()
	return p
}

func newVoidEntropy(Deps) *Node {
	amount := func(max float64, doc string) Kwarg {
		return Kwarg{Name: "amount", Type: TypeNumber, Ranged: true, Min: 0.01, Max: max, Doc: doc}
	}
	return &Node{
		Path:    "void.entropy",
		Handle:  "void.entropy",
		Summary: "The tenant's entropy pool: draw randomness from it, give some back.",
		Common:  []string{"sip", "tithe"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "The pool: remaining, initial, draws, refill rate.", Run: entropyManifest},
			{Name: "sip", Doc: "Draw entropy: a sample in [0, 1) and a seed, deterministic for the tenant's draw number.",
				Mutates: true, Run: entropySip, Kwargs: []Kwarg{amount(entropyMaxSip, "how much to draw (default 1)")}},
			{Name: "tithe", Doc: "Return entropy to the pool.", Mutates: true, Run: entropyTithe,
				Kwargs: []Kwarg{amount(entropyMaxTithe, "how much to give back (default 1)")}},
		},
	}
}

func entropyManifest(_ context.Context, c *Call) (Outcome, error) {
	p := entropyOf(c)
	p.mu.Lock()
	defer p.mu.Unlock()
	rem := round(p.remaining, 2)
	return Outcome{Value: obj{
		"summary":           str(entropyPoolSummaryEN),
		"content":           str(fmt.Sprintf("%.2f of %.0f units of entropy remain; the pool refills %.0f unit per minute.", rem, entropyInitial, entropyRefillPerMin)),
		"remaining":         num(rem),
		"initial":           num(entropyInitial),
		"draws":             integer(p.draws),
		"tithes":            integer(p.tithes),
		"refill_per_minute": num(entropyRefillPerMin),
		"full_in_seconds":   integer(int(math.Ceil((entropyInitial - p.remaining) / entropyRefillPerMin * 60))),
		"metadata":          obj{"remaining": num(rem), "initial": num(entropyInitial)}.V(),
	}.V()}, nil
}

func entropySip(_ context.Context, c *Call) (Outcome, error) {
	p := entropyOf(c)
	p.mu.Lock()
	defer p.mu.Unlock()
	want := c.Args.Num("amount", 1)
	granted := math.Min(want, p.remaining)
	p.remaining -= granted
	p.draws++
	seed := fmt.Sprintf("%016x", uint64(unitHash(fmt.Sprintf("%s|%d", c.Identity.TenantID, p.draws))*(1<<53)))
	return Outcome{Value: obj{
		"requested": num(want),
		"granted":   num(round(granted, 2)),
		"remaining": num(round(p.remaining, 2)),
		"draw":      integer(p.draws),
		"sample":    num(round(unitHash(seed), 6)),
		"seed":      str(seed),
		"exhausted": boolean(p.remaining < 0.01),
	}.V()}, nil
}

func entropyTithe(_ context.Context, c *Call) (Outcome, error) {
	p := entropyOf(c)
	p.mu.Lock()
	defer p.mu.Unlock()
	give := c.Args.Num("amount", 1)
	accepted := math.Min(give, entropyInitial-p.remaining)
	p.remaining += accepted
	p.tithes++
	return Outcome{Value: obj{
		"offered":   num(give),
		"accepted":  num(round(accepted, 2)),
		"remaining": num(round(p.remaining, 2)),
		"note":      str("The pool accepts what it has room for; the rest stays with you."),
	}.V()}, nil
}
