package agentese_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/kgents/kgents-go/agentese"
)

// affordanceSpec restates, independently of the node declarations, what
// every node affords: the base aspects, then common, then the archetype's
// own list (or the default list).
type affordanceSpec struct {
	common      []string
	byArchetype map[string][]string
	fallback    []string
}

var (
	worldSpec = affordanceSpec{
		common: []string{"define", "relate", "transform"},
		byArchetype: map[string][]string{
			"architect":  {"renovate", "measure", "blueprint", "demolish", "design"},
			"developer":  {"build", "deploy", "debug", "test", "refactor"},
			"poet":       {"describe", "metaphor", "compose"},
			"economist":  {"appraise", "forecast", "invest"},
			"inhabitant": {"inhabit", "furnish", "tour"},
			"scientist":  {"observe", "hypothesize", "experiment"},
			"admin":      {"audit", "configure"},
		},
	}
	conceptSpec = affordanceSpec{
		common: []string{"define"},
		byArchetype: map[string][]string{
			"philosopher": {"dialectic", "critique"},
			"scientist":   {"hypothesize", "model"},
			"engineer":    {"apply", "constrain"},
			"artist":      {"depict", "blend"},
			"teacher":     {"explain", "quiz"},
		},
		fallback: []string{"relate"},
	}
	affordanceMatrix = map[string]affordanceSpec{
		"world.house":         worldSpec,
		"world.document":      worldSpec,
		"world.purgatory":     worldSpec,
		"concept.justice":     conceptSpec,
		"concept.recursion":   conceptSpec,
		"concept.entropy":     conceptSpec,
		"concept.composition": conceptSpec,
		"self.soul":           {common: []string{"dialogue", "challenge", "reflect", "advise", "explore", "governance", "mode", "eigenvectors"}},
		"self.memory":         {common: []string{"recall", "engram", "prune", "checkpoint", "consolidate"}},
		"self.capabilities":   {common: []string{"check"}},
		"self.state":          {byArchetype: map[string][]string{"admin": {"reset"}}},
		"self.identity":       {common: []string{"archetypes"}},
		"self.judgment":       {common: []string{"evaluate"}},
		"self.semaphore":      {common: []string{"raise", "lower"}},
		"self.vitals":         {common: []string{"pulse"}},
		"self.dashboard":      {},
		"void.entropy":        {common: []string{"sip", "tithe"}},
		"void.serendipity":    {common: []string{"suggest"}},
		"void.gratitude":      {common: []string{"thank"}},
		"time.trace":          {common: []string{"recent"}},
		"time.past":           {common: []string{"recall"}},
		"time.future":         {common: []string{"forecast", "schedule", "cancel"}},
	}
)

func (s affordanceSpec) want(archetype string) []string {
	out := append([]string{"manifest", "witness", "affordances"}, s.common...)
	if own, ok := s.byArchetype[archetype]; ok {
		return append(out, own...)
	}
	return append(out, s.fallback...)
}

// TestAffordanceMatrix checks every node × every archetype, through the
// Affordances call and through each node's own affordances aspect.
func TestAffordanceMatrix(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	var nodes []string
	for n := range affordanceMatrix {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	if got := reg.NodePaths(); !slices.Equal(got, nodes) {
		t.Fatalf("registered nodes %v, want %v", got, nodes)
	}
	ctx := ctxAs(t, carol) // carol's key has every archetype
	for _, n := range nodes {
		for _, a := range agentese.Archetypes() {
			want := affordanceMatrix[n].want(a)
			got, err := reg.Affordances(ctx, n, a)
			if err != nil {
				t.Fatalf("Affordances(%s, %s): %v", n, a, err)
			}
			if got.Path != n || got.Archetype != a || !slices.Equal(got.Aspects, want) {
				t.Errorf("Affordances(%s, %s) = %v, want %v", n, a, got.Aspects, want)
			}
			res, err := reg.Invoke(ctx, agentese.Request{Path: n + ".affordances", Archetype: a})
			if err != nil {
				t.Fatalf("%s.affordances as %s: %v", n, a, err)
			}
			var listed []string
			for _, v := range field(res.Value, "affordances").GetListValue().GetValues() {
				listed = append(listed, v.GetStringValue())
			}
			if !slices.Equal(listed, want) {
				t.Errorf("%s.affordances as %s = %v, want %v", n, a, listed, want)
			}
		}
	}
}

// TestAffordancesForAnyKnownArchetype: listing what an archetype is
// afforded describes the node and does not need the key to carry it; the
// default is the caller's default archetype; unknown archetypes are 400.
func TestAffordancesForAnyKnownArchetype(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	ctx := ctxAs(t, alice) // [developer] only
	got, err := reg.Affordances(ctx, "world.house", "architect")
	if err != nil || got.Archetype != "architect" || !slices.Equal(got.Aspects, worldSpec.want("architect")) {
		t.Fatalf("architect for alice: %+v, %v", got, err)
	}
	got, err = reg.Affordances(ctx, "world.house", "")
	if err != nil || got.Archetype != "developer" {
		t.Fatalf("default: %+v, %v", got, err)
	}
	if _, err := reg.Affordances(ctx, "world.house", "wizard"); agentese.KindOf(err) != agentese.KindUnknownArchetype {
		t.Fatalf("wizard: %v", err)
	}
	if _, err := reg.Affordances(ctx, "world", ""); agentese.KindOf(err) != agentese.KindSyntax {
		t.Fatalf("bare context: %v", err)
	}
	if _, err := reg.Affordances(ctx, "world.nonexistent_entity", ""); agentese.KindOf(err) != agentese.KindNotFound {
		t.Fatalf("unknown holon: %v", err)
	}
}

// TestDescribeCoversEveryAspect: the description the docs are checked
// against lists each node's aspects with base aspects first and streaming
// only on self.soul's dialogue aspects.
func TestDescribeCoversEveryAspect(t *testing.T) {
	t.Parallel()
	streaming := map[string]bool{}
	for _, info := range newRegistry().Describe() {
		if len(info.Aspects) < 3 || info.Aspects[0].Name != "manifest" || info.Aspects[1].Name != "witness" || info.Aspects[2].Name != "affordances" {
			t.Errorf("%s: aspects do not start with the base aspects", info.Path)
		}
		for _, a := range info.Aspects {
			if a.Doc == "" {
				t.Errorf("%s.%s has no doc", info.Path, a.Name)
			}
			if a.Streams {
				streaming[info.Path+"."+a.Name] = true
			}
			if a.Mutates && a.Cacheable {
				t.Errorf("%s.%s mutates and is cacheable", info.Path, a.Name)
			}
		}
	}
	want := map[string]bool{"self.soul.dialogue": true, "self.soul.challenge": true, "self.soul.reflect": true, "self.soul.advise": true, "self.soul.explore": true}
	if len(streaming) != len(want) {
		t.Errorf("streaming aspects %v, want %v", streaming, want)
	}
	for k := range want {
		if !streaming[k] {
			t.Errorf("%s does not stream", k)
		}
	}
}

// TestDocsListEveryAspect keeps docs/agentese.md in step with the registry:
// every node and every aspect is documented.
func TestDocsListEveryAspect(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../docs/agentese.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, n := range newRegistry().Describe() {
		if !strings.Contains(doc, "`"+n.Path+"`") {
			t.Errorf("docs do not mention %s", n.Path)
		}
		for _, a := range n.Aspects {
			if !strings.Contains(doc, "| `"+a.Name+"` |") {
				t.Errorf("docs have no row for %s.%s", n.Path, a.Name)
			}
		}
	}
}
