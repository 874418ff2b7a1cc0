package agentese

import (
	"context"
	"fmt"

	"github.com/kgents/kgents-go/apijson"
	"github.com/kgents/kgents-go/tenancy"
)

// self.capabilities: what the caller may do, and a dry run of whether a
// given path would be allowed (scope, archetype, affordance), without
// invoking it.
func init() { registerBuiltin(newSelfCapabilities) }

func newSelfCapabilities(Deps) *Node {
	return &Node{
		Path:    "self.capabilities",
		Handle:  "self.capabilities",
		Summary: "What this key may do: scopes, budgets, limits, and whether a path is allowed.",
		Common:  []string{"check"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "Scopes, archetypes, budgets and limits of the caller.", Run: capabilitiesManifest},
			{Name: "check", Doc: "Would invoking this aspect path, as the current observer, be allowed? Nothing is invoked.",
				Run:    capabilitiesCheck,
				Kwargs: []Kwarg{{Name: "path", Type: TypeString, Required: true, MaxLen: 2 * MaxPathLen, Doc: "an aspect path"}}},
		},
	}
}

func capabilitiesManifest(_ context.Context, c *Call) (Outcome, error) {
	id := c.Identity
	budgets := make([]string, len(id.Limits.Budgets))
	for i, b := range id.Limits.Budgets {
		budgets[i] = apijson.EnumString(b)
	}
	return Outcome{Value: obj{
		"tier":           str(string(id.Tier)),
		"read":           boolean(id.Scopes.Has(tenancy.ScopeRead)),
		"write":          boolean(id.Scopes.Has(tenancy.ScopeWrite)),
		"admin":          boolean(id.Scopes.Has(tenancy.ScopeAdmin)),
		"archetypes":     strs(id.Archetypes),
		"budgets":        strs(budgets),
		"default_budget": str(apijson.EnumString(id.Limits.DefaultBudget)),
		"limits": obj{
			"requests_per_minute": integer(int(id.Limits.RequestsPerMinute)),
			"requests_per_day":    integer(int(id.Limits.RequestsPerDay)),
			"tokens_per_month":    integer(int(id.Limits.TokensPerMonth)),
		}.V(),
		"note": str("0 means unlimited."),
	}.V()}, nil
}

// capabilitiesCheck runs the same checks an invocation would, in the same
// order, and reports every reason it would be refused.
func capabilitiesCheck(_ context.Context, c *Call) (Outcome, error) {
	path := c.Args.Str("path")
	out := obj{"path": str(path), "observer": str(c.Archetype)}
	var reasons []string
	p, err := ParseAspect(path)
	if err == nil {
		var n *node
		if n, err = c.reg.lookup(p.Node(), path, c.reg.aspectPaths); err == nil {
			reasons = append(reasons, dryRunAspect(c, n, p, out)...)
		}
	}
	if err != nil {
		reasons = append(reasons, withSuggestion(err, path, c.reg.aspectPaths).Error())
	}
	out["allowed"] = boolean(len(reasons) == 0)
	out["reasons"] = strs(reasons)
	return Outcome{Value: out.V()}, nil
}

// dryRunAspect fills in what the aspect needs and returns why it would be refused.
func dryRunAspect(c *Call, n *node, p Path, out obj) []string {
	asp := n.aspects[p.Aspect()]
	if asp == nil {
		return []string{fmt.Sprintf("%s has no aspect %s", n.decl.Path, quote(p.Aspect()))}
	}
	var reasons []string
	need := tenancy.ScopeRead
	if asp.Mutates {
		need = tenancy.ScopeWrite
	}
	var afforded []string
	for _, a := range Archetypes() {
		if n.affords(a, asp.Name) {
			afforded = append(afforded, a)
		}
	}
	out["mutates"] = boolean(asp.Mutates)
	out["streams"] = boolean(asp.Streams())
	out["needs_scope"] = str(need.String())
	out["afforded_to"] = strs(afforded)
	if !c.Identity.Scopes.Has(need) {
		reasons = append(reasons, fmt.Sprintf("this key lacks the %s scope", need))
	}
	if !n.affords(c.Archetype, asp.Name) {
		reasons = append(reasons, fmt.Sprintf("not afforded to %s (afforded to %s)", c.Archetype, joinOr(afforded)))
	}
	return reasons
}
