package agentese

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kgents/kgents-go/tenancy"
)

// DefaultArchetype is the observer archetype when a request names none and
// the key has it.
const DefaultArchetype = "developer"

// archetypeLenses are the archetypes AGENTESE knows, in their documented
// order, each with the lens it sees nodes through. Immutable.
var archetypeLenses = [...]struct{ name, lens string }{
	{"developer", "sees systems to build, test, deploy and debug"},
	{"architect", "sees structure, space and load: plans to draw and renovate"},
	{"poet", "sees images, rhythm and metaphor"},
	{"economist", "sees value, cost, risk and return"},
	{"inhabitant", "sees a place to live in: comfort, use and belonging"},
	{"scientist", "sees phenomena to observe, hypothesise about and test"},
	{"admin", "sees ownership, configuration and audit trails"},
	{"philosopher", "sees arguments: theses, objections and syntheses"},
	{"engineer", "sees mechanisms: constraints, tolerances and applications"},
	{"artist", "sees forms to depict and combine"},
	{"teacher", "sees ideas to explain and check understanding of"},
}

// Archetypes lists the archetypes AGENTESE knows.
func Archetypes() []string {
	out := make([]string, len(archetypeLenses))
	for i, a := range archetypeLenses {
		out[i] = a.name
	}
	return out
}

// IsArchetype reports whether AGENTESE knows the archetype.
func IsArchetype(a string) bool { return archetypeLens(a) != "" }

func archetypeLens(a string) string {
	for _, l := range archetypeLenses {
		if l.name == a {
			return l.lens
		}
	}
	return ""
}

// canonicalArchetype trims and lowercases a requested archetype.
func canonicalArchetype(a string) string {
	if len(a) > 64 {
		return a // refused as unknown; never worth copying
	}
	return strings.ToLower(strings.TrimSpace(a))
}

// defaultArchetype is the archetype used when a request names none: the
// developer archetype if the key has it (every key has it unless its entry
// says otherwise), else the key's first archetype.
func defaultArchetype(id *tenancy.Identity) string {
	if id == nil || len(id.Archetypes) == 0 || id.AllowsArchetype(DefaultArchetype) {
		return DefaultArchetype
	}
	return id.Archetypes[0]
}

// identity returns the caller or an Unauthenticated error.
func identity(ctx context.Context) (*tenancy.Identity, error) {
	id := tenancy.IdentityFrom(ctx)
	if id == nil {
		return nil, newError(KindUnauthenticated, "An API key is required to use AGENTESE.")
	}
	return id, nil
}

// knownArchetype canonicalises a requested archetype (the caller's default
// when empty) and checks AGENTESE knows it.
func knownArchetype(id *tenancy.Identity, requested string) (string, error) {
	a := canonicalArchetype(requested)
	if a == "" {
		a = defaultArchetype(id)
	}
	if !IsArchetype(a) {
		e := newError(KindUnknownArchetype, fmt.Sprintf("Unknown observer archetype %s.", quote(a)))
		e.Options, e.OptionsLabel = Archetypes(), "known archetypes"
		return "", e
	}
	return a, nil
}

// bindObserver is the observer of an invocation: a known archetype that the
// caller's key was given. Clients cannot assert an archetype their key does
// not carry (the Python service's observers were self-asserted).
func bindObserver(id *tenancy.Identity, requested string) (string, error) {
	a, err := knownArchetype(id, requested)
	if err != nil {
		return "", err
	}
	if !id.AllowsArchetype(a) {
		e := newError(KindArchetypeDenied, fmt.Sprintf("This API key may not observe as %s.", quote(a)))
		e.Options, e.OptionsLabel = slices.Clone(id.Archetypes), "archetypes of this key"
		if len(e.Options) == 0 {
			e.Msg += " It has no archetypes."
		}
		return "", e
	}
	return a, nil
}
