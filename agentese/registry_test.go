package agentese_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kgents/kgents-go/agentese"
	"github.com/kgents/kgents-go/tenancy"
)

// TestInvokeErrorClasses: each class of failure, with what it lists and
// the suggestion it makes.
func TestInvokeErrorClasses(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	cases := []struct {
		name, key, path, archetype, kw string
		kind                           agentese.Kind
		suggestion                     string
		options                        []string
		msg                            []string
	}{
		{name: "uppercase suggests the lowercase path", key: bob, path: "World.House.Manifest",
			kind: agentese.KindSyntax, suggestion: "world.house.manifest"},
		{name: "padding suggests the trimmed path", key: bob, path: "  self.soul.challenge ",
			kind: agentese.KindSyntax, suggestion: "self.soul.challenge"},
		{name: "slashes suggest dots", key: bob, path: "world/house/manifest",
			kind: agentese.KindSyntax, suggestion: "world.house.manifest"},
		{name: "look-alike letter suggests the ASCII path", key: bob, path: "world.house.m\u0430nifest",
			kind: agentese.KindSyntax, suggestion: "world.house.manifest"},
		{name: "a node suggests its manifest", key: bob, path: "world.house",
			kind: agentese.KindSyntax, suggestion: "world.house.manifest"},
		{name: "injection suggests nothing", key: bob, path: "world.house; rm -rf /", kind: agentese.KindSyntax},
		{name: "misspelled context", key: bob, path: "wrold.house.manifest",
			kind: agentese.KindNotFound, suggestion: "world.house.manifest", options: agentese.Contexts()},
		{name: "misspelled holon lists the holons", key: bob, path: "world.hosue.manifest",
			kind: agentese.KindNotFound, suggestion: "world.house.manifest", options: []string{"document", "house", "purgatory"}},
		{name: "unknown holon far from everything", key: bob, path: "world.nonexistent_entity.manifest",
			kind: agentese.KindNotFound, options: []string{"document", "house", "purgatory"}},
		{name: "deeper path than any node", key: bob, path: "world.house.kitchen.manifest",
			kind: agentese.KindNotFound, msg: []string{`no holon "house.kitchen"`}},
		{name: "misspelled aspect suggests the afforded one", key: bob, path: "world.house.manifset",
			kind: agentese.KindNotAfforded, suggestion: "world.house.manifest", msg: []string{`no aspect "manifset"`}},
		{name: "aspect of another archetype", key: bob, path: "world.house.demolish",
			kind: agentese.KindNotAfforded, msg: []string{"afforded to architect", "not afforded to the developer archetype"},
			options: []string{"manifest", "witness", "affordances", "define", "relate", "transform", "build", "deploy", "debug", "test", "refactor"}},
		{name: "archetype the key lacks", key: alice, path: "world.house.manifest", archetype: "architect",
			kind: agentese.KindArchetypeDenied, options: []string{"developer"}},
		{name: "unknown archetype", key: carol, path: "world.house.manifest", archetype: "wizard",
			kind: agentese.KindUnknownArchetype, options: agentese.Archetypes()},
		{name: "archetype injection is echoed safely", key: carol, path: "world.house.manifest", archetype: "dev\x00\u0430",
			kind: agentese.KindUnknownArchetype, msg: []string{`"dev\x00\u0430"`}},
		{name: "unknown kwarg lists the accepted ones", key: bob, path: "world.house.deploy", kw: `{"env": "prod"}`,
			kind: agentese.KindArgument, msg: []string{`"env"`, "environment (string, optional, one of staging|production)"}},
		{name: "precondition", key: bob, path: "world.purgatory.deploy",
			kind: agentese.KindPrecondition, msg: []string{"build is unknown", "world.purgatory.build"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := reg.Invoke(ctxAs(t, tc.key), agentese.Request{Path: tc.path, Archetype: tc.archetype, Kwargs: kwargs(t, tc.kw)})
			var e *agentese.Error
			if !errors.As(err, &e) {
				t.Fatalf("Invoke(%q) = %v, want kind %v", tc.path, err, tc.kind)
			}
			if e.Kind != tc.kind {
				t.Fatalf("Invoke(%q): kind %v (%v), want %v", tc.path, e.Kind, err, tc.kind)
			}
			if e.Suggestion != tc.suggestion {
				t.Errorf("suggestion %q, want %q (%v)", e.Suggestion, tc.suggestion, err)
			}
			if tc.options != nil && !slices.Equal(e.Options, tc.options) {
				t.Errorf("options %v, want %v", e.Options, tc.options)
			}
			for _, m := range tc.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
			assertSafeMessage(t, err.Error())
		})
	}
}

// TestPythonAgenteseCases ports test_agentese.py (reference §13) with the
// status classes SPEC §4.6 fixes: 400 syntax, 404 unknown, 403 denied.
func TestPythonAgenteseCases(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	ctx := ctxAs(t, carol)
	invoke := func(path, archetype string) error {
		_, err := reg.Invoke(ctx, agentese.Request{Path: path, Archetype: archetype})
		return err
	}
	resolve := func(path string) error { _, err := reg.Resolve(ctx, path); return err }
	affordances := func(path, archetype string) error { _, err := reg.Affordances(ctx, path, archetype); return err }
	cases := []struct {
		name string
		err  error
		want agentese.Kind // 0: success
	}{
		{"invoke valid path self.soul.manifest", invoke("self.soul.manifest", ""), 0},
		{"invoke with custom observer", invoke("world.house.manifest", "architect"), 0},
		{"resolve valid path", resolve("self.soul"), 0},
		{"affordances valid path", affordances("world.house", ""), 0},
		{"affordances with archetype", affordances("world.house", "architect"), 0},
		{"invoke invalid context", invoke("invalid.house.manifest", ""), agentese.KindNotFound},
		{"invoke single segment", invoke("world", ""), agentese.KindSyntax},
		{"invoke empty path", invoke("", ""), agentese.KindSyntax},
		{"resolve invalid path", resolve("invalid.context"), agentese.KindNotFound},
		{"affordances nonexistent path", affordances("world.nonexistent_entity", ""), agentese.KindNotFound},
		{"path with special characters", invoke("world.house; rm -rf /", ""), agentese.KindSyntax},
		{"path with traversal attempt", invoke("world.house.../../etc/passwd", ""), agentese.KindSyntax},
		{"flagship self.soul.challenge", invoke("self.soul.challenge", ""), agentese.KindArgument}, // needs a message; see soul tests
	}
	for _, tc := range cases {
		if got := agentese.KindOf(tc.err); got != tc.want || (tc.want == 0) != (tc.err == nil) {
			t.Errorf("%s: %v (kind %v), want kind %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// TestInjectionNeverReachesANode: hostile paths are refused by the grammar;
// no aspect of any node runs.
func TestInjectionNeverReachesANode(t *testing.T) {
	t.Parallel()
	var runs atomic.Int64
	spy := func(context.Context, *agentese.Call) (agentese.Outcome, error) {
		runs.Add(1)
		return agentese.Outcome{}, nil
	}
	reg, err := agentese.NewRegistry([]*agentese.Node{{
		Path:   "world.house",
		Common: []string{"passwd", "rm"},
		Aspects: []*agentese.Aspect{
			{Name: "manifest", Run: spy}, {Name: "witness", Run: spy}, {Name: "affordances", Run: spy},
			{Name: "passwd", Run: spy}, {Name: "rm", Run: spy},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxAs(t, carol)
	for _, path := range []string{
		"world.house; rm -rf /", "world.house.../../etc/passwd", "world.house.manifest\x00", "world.house.m\u0430nifest",
		"world.house.manifest;", "world.house.manifest\n", "world.house.manifest ", "world.house.$(rm)", "world.house.`rm`",
		"world.house.manifest|cat", "world.house.manifest&&rm", "../world.house.manifest", "world.house.etc/passwd",
		strings.Repeat("world.house.", 10000) + "manifest", "world.house.manifest\u200b", "world.house.MANIFEST",
		"world%2ehouse%2emanifest", "world.house.manifest%00", "world.house.rm -rf", "world\\house\\manifest",
	} {
		_, err := reg.Invoke(ctx, agentese.Request{Path: path})
		if agentese.KindOf(err) != agentese.KindSyntax {
			t.Errorf("Invoke(%q) = %v, want a syntax error", path, err)
		}
		if _, err := reg.Resolve(ctx, path); agentese.KindOf(err) != agentese.KindSyntax {
			t.Errorf("Resolve(%q) = %v, want a syntax error", path, err)
		}
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("%d aspects ran", n)
	}
}

func TestResolve(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	devWorld := []string{"manifest", "witness", "affordances", "define", "relate", "transform", "build", "deploy", "debug", "test", "refactor"}
	architectWorld := []string{"manifest", "witness", "affordances", "define", "relate", "transform", "renovate", "measure", "blueprint", "demolish", "design"}
	cases := []struct {
		name string
		ctx  context.Context
		path string
		want agentese.Resolution
	}{
		{"developer key", ctxAs(t, bob), "world.house",
			agentese.Resolution{Path: "world.house", Handle: "world.house", Context: "world", Archetype: "developer", Affordances: devWorld}},
		{"self.soul is a real node", ctxAs(t, alice), "self.soul",
			agentese.Resolution{Path: "self.soul", Handle: "self.soul", Context: "self", Archetype: "developer",
				Affordances: []string{"manifest", "witness", "affordances", "dialogue", "challenge", "reflect", "advise", "explore", "governance", "mode", "eigenvectors"}}},
		{"a key without developer resolves for its first archetype",
			ctxWith(&tenancy.Identity{TenantID: "t", Scopes: tenancy.ScopeRead, Archetypes: []string{"architect", "poet"}}), "world.house",
			agentese.Resolution{Path: "world.house", Handle: "world.house", Context: "world", Archetype: "architect", Affordances: architectWorld}},
	}
	for _, tc := range cases {
		got, err := reg.Resolve(tc.ctx, tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got.Path != tc.want.Path || got.Handle != tc.want.Handle || got.Context != tc.want.Context ||
			got.Archetype != tc.want.Archetype || !slices.Equal(got.Affordances, tc.want.Affordances) {
			t.Errorf("%s: Resolve = %+v, want %+v", tc.name, got, tc.want)
		}
	}
	if _, err := reg.Resolve(context.Background(), "world.house"); agentese.KindOf(err) != agentese.KindUnauthenticated {
		t.Errorf("Resolve without identity: %v", err)
	}
	if _, err := reg.Resolve(ctxAs(t, bob), "world.house.manifest"); agentese.KindOf(err) != agentese.KindNotFound {
		t.Errorf("Resolve of an aspect path: %v", err)
	} else if e := (*agentese.Error)(nil); errors.As(err, &e) && e.Suggestion != "world.house" {
		t.Errorf("Resolve of an aspect path suggests %q", e.Suggestion)
	}
}

// TestObserverBinding: the observer archetype is the request's (trimmed,
// any case), defaulting to developer, and must be one the key was given.
func TestObserverBinding(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	noDev := ctxWith(&tenancy.Identity{TenantID: "t-nodev", Scopes: tenancy.ScopeRead, Archetypes: []string{"poet"}})
	cases := []struct {
		name      string
		ctx       context.Context
		archetype string
		wantType  string
		wantKind  agentese.Kind
	}{
		{"default is developer", ctxAs(t, alice), "", "developer", 0},
		{"case and space are ignored", ctxAs(t, bob), "  Architect ", "architect", 0},
		{"a key's other archetype", ctxAs(t, carol), "economist", "economist", 0},
		{"not the key's", ctxAs(t, bob), "poet", "", agentese.KindArchetypeDenied},
		{"default falls back to the key's first archetype", noDev, "", "poet", 0},
		{"developer explicitly, without it", noDev, "developer", "", agentese.KindArchetypeDenied},
		{"unknown", ctxAs(t, carol), "root", "", agentese.KindUnknownArchetype},
		{"overlong", ctxAs(t, carol), strings.Repeat("a", 1000), "", agentese.KindUnknownArchetype},
	}
	for _, tc := range cases {
		res, err := reg.Invoke(tc.ctx, agentese.Request{Path: "world.house.manifest", Archetype: tc.archetype})
		if got := agentese.KindOf(err); got != tc.wantKind {
			t.Errorf("%s: %v, want kind %v", tc.name, err, tc.wantKind)
			continue
		}
		if err == nil && field(res.Value, "type").GetStringValue() != tc.wantType {
			t.Errorf("%s: observed as %v, want %s", tc.name, field(res.Value, "type"), tc.wantType)
		}
		if err != nil && len(err.Error()) > 1200 {
			t.Errorf("%s: message of %d bytes", tc.name, len(err.Error()))
		}
	}
}

// TestMutates is the scope decision: write for mutating aspects only;
// anything unparseable or unknown reads (and then fails 400/404).
func TestMutates(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	for path, want := range map[string]bool{
		"world.house.build": true, "world.house.deploy": true, "world.house.demolish": true, "world.house.renovate": true,
		"world.house.refactor": true, "world.house.transform": true, "world.document.invest": true,
		"void.entropy.sip": true, "void.entropy.tithe": true, "void.gratitude.thank": true, "self.memory.engram": true,
		"self.memory.prune": true, "self.semaphore.raise": true, "self.state.reset": true, "time.future.schedule": true,
		"world.house.manifest": false, "world.house.test": false, "world.house.debug": false, "world.house.measure": false,
		"self.soul.challenge": false, "self.soul.dialogue": false, "self.soul.governance": false,
		"void.entropy.manifest": false, "time.trace.manifest": false, "concept.justice.define": false,
		"world.house.witness": false, "world.house.affordances": false,
		"world.house": false, "": false, "world.house.build; rm": false, "world.nothing.build": false,
		"world.house.nothing": false, "World.House.Build": false,
	} {
		if got := reg.Mutates(path); got != want {
			t.Errorf("Mutates(%q) = %v, want %v", path, got, want)
		}
	}
}

// TestNewRegistryRejectsBadDeclarations: declarations are validated.
func TestNewRegistryRejectsBadDeclarations(t *testing.T) {
	t.Parallel()
	run := func(context.Context, *agentese.Call) (agentese.Outcome, error) { return agentese.Outcome{}, nil }
	manifest := &agentese.Aspect{Name: "manifest", Run: run}
	cases := map[string][]*agentese.Node{
		"bad path":              {{Path: "World.x", Aspects: []*agentese.Aspect{manifest}}},
		"single segment":        {{Path: "world", Aspects: []*agentese.Aspect{manifest}}},
		"no manifest":           {{Path: "world.x"}},
		"duplicate node":        {{Path: "world.x", Aspects: []*agentese.Aspect{manifest}}, {Path: "world.x", Aspects: []*agentese.Aspect{manifest}}},
		"undeclared affordance": {{Path: "world.x", Common: []string{"fly"}, Aspects: []*agentese.Aspect{manifest}}},
		"unafforded aspect":     {{Path: "world.x", Aspects: []*agentese.Aspect{manifest, {Name: "fly", Run: run}}}},
		"unknown archetype":     {{Path: "world.x", ByArchetype: map[string][]string{"wizard": nil}, Aspects: []*agentese.Aspect{manifest}}},
		"bad aspect name":       {{Path: "world.x", Common: []string{"Fly"}, Aspects: []*agentese.Aspect{manifest, {Name: "Fly", Run: run}}}},
		"no run":                {{Path: "world.x", Common: []string{"fly"}, Aspects: []*agentese.Aspect{manifest, {Name: "fly"}}}},
		"cacheable mutation":    {{Path: "world.x", Common: []string{"fly"}, Aspects: []*agentese.Aspect{manifest, {Name: "fly", Run: run, Mutates: true, Cacheable: true}}}},
		"duplicate affordance":  {{Path: "world.x", Common: []string{"manifest"}, Aspects: []*agentese.Aspect{manifest}}},
		"untyped kwarg": {{Path: "world.x", Common: []string{"fly"}, Aspects: []*agentese.Aspect{manifest,
			{Name: "fly", Run: run, Kwargs: []agentese.Kwarg{{Name: "to"}}}}}},
	}
	for name, nodes := range cases {
		if _, err := agentese.NewRegistry(nodes); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := agentese.NewRegistry(agentese.BuiltinNodes(agentese.Deps{})); err != nil {
		t.Fatalf("built-in nodes: %v", err)
	}
}
