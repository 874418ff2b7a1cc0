package agentese

import (
	"context"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// self.identity: who the caller is, as the API key says (never what the
// client claims).
func init() { registerBuiltin(newSelfIdentity) }

func newSelfIdentity(Deps) *Node {
	return &Node{
		Path:    "self.identity",
		Handle:  "self.identity",
		Summary: "Who is calling: tenant, user, key, tier, scopes and archetypes.",
		Common:  []string{"archetypes"},
		Aspects: []*Aspect{
			{Name: "manifest", Doc: "The caller's tenant, user, key id (not the key), tier, scopes, archetypes and current observer.", Run: identityManifest},
			{Name: "archetypes", Doc: "The archetypes this key may observe as, each with its lens.", Run: identityArchetypes},
		},
	}
}

func identityValue(c *Call) obj {
	id := c.Identity
	return obj{
		"tenant_id":  str(id.TenantID),
		"user_id":    str(id.UserID),
		"key_id":     str(id.KeyID),
		"tier":       str(string(id.Tier)),
		"scopes":     strs(strings.Split(id.Scopes.String(), ",")),
		"archetypes": strs(id.Archetypes),
		"observer":   str(c.Archetype),
	}
}

func identityManifest(_ context.Context, c *Call) (Outcome, error) {
	return Outcome{Value: identityValue(c).V()}, nil
}

func identityArchetypes(_ context.Context, c *Call) (Outcome, error) {
	vs := make([]*structpb.Value, len(c.Identity.Archetypes))
	for i, a := range c.Identity.Archetypes {
		vs[i] = obj{"archetype": str(a), "known": boolean(IsArchetype(a)), "lens": str(archetypeLens(a)), "current": boolean(a == c.Archetype)}.V()
	}
	return Outcome{Value: obj{"archetypes": array(vs...), "all_known": strs(Archetypes())}.V()}, nil
}
