package agentese_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kgents/kgents-go/agentese"
	"github.com/kgents/kgents-go/apijson"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	"github.com/kgents/kgents-go/tenancy"
)

// minimalKwargs builds valid kwargs for an aspect from its declaration.
func minimalKwargs(node string, a agentese.AspectInfo, now time.Time) *structpb.Struct {
	s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for _, k := range a.Kwargs {
		if !k.Required {
			continue
		}
		var v *structpb.Value
		switch k.Type {
		case agentese.TypeString:
			v = structpb.NewStringValue("a small test")
			if len(k.Enum) > 0 {
				v = structpb.NewStringValue(k.Enum[0])
			}
		case agentese.TypeNumber, agentese.TypeInteger:
			v = structpb.NewNumberValue(max(k.Min, 1))
		case agentese.TypeBool:
			v = structpb.NewBoolValue(true)
		case agentese.TypeObject:
			v = structpb.NewStructValue(&structpb.Struct{})
		case agentese.TypeList:
			v = structpb.NewListValue(&structpb.ListValue{})
		}
		switch k.Name {
		case "at":
			v = structpb.NewStringValue(now.Add(time.Hour).Format(time.RFC3339))
		case "with":
			v = structpb.NewStringValue("justice")
			if node == "concept.justice" {
				v = structpb.NewStringValue("entropy")
			}
		case "path":
			v = structpb.NewStringValue("world.house.build")
		}
		s.Fields[k.Name] = v
	}
	if node == "self.memory" && a.Name == "prune" { // needs one of its optional kwargs
		s.Fields["key"] = structpb.NewStringValue("a small test")
	}
	return s
}

// TestEveryAspectRuns invokes every afforded aspect of every node for every
// archetype with minimal valid kwargs: each succeeds (or refuses for the
// node's state: deploying an unbuilt entity, renovating a demolished one)
// and its result renders as API JSON.
func TestEveryAspectRuns(t *testing.T) {
	t.Parallel()
	clock := newClock()
	reg := newRegistry(agentese.WithClock(clock.Now))
	ctx := ctxAs(t, carol)
	ran, refused := 0, 0
	for _, info := range reg.Describe() {
		aspects := map[string]agentese.AspectInfo{}
		for _, a := range info.Aspects {
			aspects[a.Name] = a
		}
		for _, archetype := range agentese.Archetypes() {
			for _, name := range info.Affordances[archetype] {
				path := info.Path + "." + name
				res, err := reg.Invoke(ctx, agentese.Request{Path: path, Archetype: archetype,
					Kwargs: minimalKwargs(info.Path, aspects[name], clock.Now())})
				if agentese.KindOf(err) == agentese.KindPrecondition {
					refused++
					continue
				}
				if err != nil {
					t.Errorf("%s as %s: %v", path, archetype, err)
					continue
				}
				ran++
				if res.Path != path || res.Aspect != name || res.Value.GetKind() == nil {
					t.Errorf("%s as %s: result %+v", path, archetype, res)
				}
				if _, err := apijson.Marshal(&agentesev1.InvokeResponse{Path: res.Path, Result: res.Value}); err != nil {
					t.Errorf("%s: result does not render: %v", path, err)
				}
			}
		}
	}
	if ran < 500 || refused > ran/10 {
		t.Fatalf("%d aspects ran, %d refused", ran, refused)
	}
}

func invokeOK(t *testing.T, reg *agentese.Registry, ctx context.Context, path, archetype, js string) *structpb.Value {
	t.Helper()
	res, err := reg.Invoke(ctx, agentese.Request{Path: path, Archetype: archetype, Kwargs: kwargs(t, js)})
	if err != nil {
		t.Fatalf("%s as %q with %s: %v", path, archetype, js, err)
	}
	return res.Value
}

func strField(v *structpb.Value, name string) string  { return field(v, name).GetStringValue() }
func numField(v *structpb.Value, name string) float64 { return field(v, name).GetNumberValue() }

func listStrings(v *structpb.Value) []string {
	var out []string
	for _, x := range v.GetListValue().GetValues() {
		out = append(out, x.GetStringValue())
	}
	return out
}

// TestWorldLifecycle: mutating world aspects change what reads report, per
// tenant.
func TestWorldLifecycle(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	ctx := ctxAs(t, bob)
	m := invokeOK(t, reg, ctx, "world.house.manifest", "", "")
	for _, f := range []string{"type", "entity", "language", "dependencies", "structure", "build_status", "test_coverage", "issues"} {
		if field(m, f) == nil {
			t.Fatalf("developer manifest lacks %s: %v", f, m)
		}
	}
	if strField(m, "type") != "developer" || strField(m, "entity") != "house" || strField(m, "build_status") != "unknown" {
		t.Fatalf("fresh manifest: %v", m)
	}
	if a := invokeOK(t, reg, ctx, "world.house.manifest", "architect", ""); strField(a, "type") != "architect" || field(a, "language") != nil || numField(a, "total_size") != 92 {
		t.Fatalf("architect manifest: %v", a)
	}

	b := invokeOK(t, reg, ctx, "world.house.build", "", "")
	if strField(b, "status") != "done" || strField(b, "aspect") != "build" || strField(b, "build_status") != "passing" || !strings.Contains(strField(b, "note"), "Built house@0") {
		t.Fatalf("build ack: %v", b)
	}
	if strField(invokeOK(t, reg, ctx, "world.house.manifest", "", ""), "build_status") != "passing" {
		t.Fatal("build did not make the build pass")
	}
	r := invokeOK(t, reg, ctx, "world.house.refactor", "", `{"target": "systems/"}`)
	if numField(r, "revision") != 1 {
		t.Fatalf("refactor ack: %v", r)
	}
	m = invokeOK(t, reg, ctx, "world.house.manifest", "", "")
	if strField(m, "build_status") != "stale" || numField(m, "test_coverage") != 0.74 ||
		!slices.Contains(listStrings(field(m, "issues")), "build is stale: built at revision 0, now at 1") {
		t.Fatalf("after refactor: %v", m)
	}
	if _, err := reg.Invoke(ctx, agentese.Request{Path: "world.house.deploy"}); agentese.KindOf(err) != agentese.KindPrecondition ||
		!strings.Contains(err.Error(), "build is stale") {
		t.Fatalf("deploying a stale build: %v", err)
	}
	invokeOK(t, reg, ctx, "world.house.build", "", "")
	if d := invokeOK(t, reg, ctx, "world.house.deploy", "", `{"environment": "Production"}`); strField(d, "environment") != "production" {
		t.Fatalf("deploy ack: %v", d)
	}
	if tr := invokeOK(t, reg, ctx, "world.house.test", "", ""); numField(tr, "failed") != 0 || numField(tr, "tests") != 42 {
		t.Fatalf("tests on a passing build: %v", tr)
	}

	if _, err := reg.Invoke(ctx, agentese.Request{Path: "world.house.demolish", Archetype: "architect", Kwargs: kwargs(t, `{"confirm": false}`)}); agentese.KindOf(err) != agentese.KindArgument {
		t.Fatalf("demolish without confirmation: %v", err)
	}
	invokeOK(t, reg, ctx, "world.house.demolish", "architect", `{"confirm": true}`)
	if strField(invokeOK(t, reg, ctx, "world.house.manifest", "", ""), "build_status") != "demolished" {
		t.Fatal("demolition not visible to the developer")
	}
	if _, err := reg.Invoke(ctx, agentese.Request{Path: "world.house.renovate", Archetype: "architect"}); agentese.KindOf(err) != agentese.KindPrecondition {
		t.Fatalf("renovating rubble: %v", err)
	}
	if b := invokeOK(t, reg, ctx, "world.house.build", "", ""); !strings.Contains(strField(b, "note"), "Rebuilt") {
		t.Fatalf("rebuild: %v", b)
	}
	if _, err := reg.Invoke(ctx, agentese.Request{Path: "world.house.audit", Archetype: "admin"}); agentese.KindOf(err) != agentese.KindArchetypeDenied {
		t.Fatalf("audit as an archetype bob's key lacks: %v", err)
	}
	if strField(invokeOK(t, reg, ctxAs(t, carol), "world.house.manifest", "", ""), "build_status") != "unknown" {
		t.Fatal("another tenant sees bob's house")
	}
}

func TestWorldAuditAndConfig(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	ctx := ctxAs(t, carol)
	invokeOK(t, reg, ctx, "world.document.configure", "admin", `{"key": "license", "value": "CC-BY"}`)
	invokeOK(t, reg, ctx, "world.document.invest", "economist", `{"amount": 800}`)
	a := invokeOK(t, reg, ctx, "world.document.audit", "admin", "")
	changes := field(a, "changes").GetListValue().GetValues()
	if len(changes) != 2 || strField(changes[0], "aspect") != "invest" || strField(changes[1], "aspect") != "configure" {
		t.Fatalf("audit changes (newest first): %v", changes)
	}
	if strField(field(a, "config"), "license") != "CC-BY" {
		t.Fatalf("config: %v", a)
	}
	if v := numField(invokeOK(t, reg, ctx, "world.document.appraise", "economist", ""), "value"); v != 2000 {
		t.Fatalf("value after investing 800 in a 1200 document: %v", v)
	}
	f := invokeOK(t, reg, ctx, "world.document.forecast", "economist", `{"years": 2}`)
	proj := field(f, "projection").GetListValue().GetValues()
	if len(proj) != 2 || numField(proj[0], "value") != 1860 || numField(proj[1], "value") != 1729.8 {
		t.Fatalf("forecast at -7%%/year: %v", proj)
	}
	for i := range 15 { // with license, 16 keys: the most kept
		invokeOK(t, reg, ctx, "world.document.configure", "admin", fmt.Sprintf(`{"key": "k%d", "value": "v"}`, i))
	}
	if _, err := reg.Invoke(ctx, agentese.Request{Path: "world.document.configure", Archetype: "admin",
		Kwargs: kwargs(t, `{"key": "one-too-many", "value": "v"}`)}); agentese.KindOf(err) != agentese.KindPrecondition {
		t.Fatalf("17th config key: %v", err)
	}
}

// TestEntropyPool: sips draw, tithes return, time refills; samples are
// deterministic per tenant and draw.
func TestEntropyPool(t *testing.T) {
	t.Parallel()
	clock := newClock()
	reg := newRegistry(agentese.WithClock(clock.Now))
	ctx := ctxAs(t, bob)
	m := invokeOK(t, reg, ctx, "void.entropy.manifest", "", "")
	if strField(m, "summary") != "Entropy Pool (Accursed Share)" || numField(m, "remaining") != 100 || numField(m, "initial") != 100 {
		t.Fatalf("fresh pool: %v", m)
	}
	first := invokeOK(t, reg, ctx, "void.entropy.sip", "", `{"amount": 10}`)
	if numField(first, "granted") != 10 || numField(first, "remaining") != 90 || numField(first, "draw") != 1 {
		t.Fatalf("first sip: %v", first)
	}
	for range 9 {
		invokeOK(t, reg, ctx, "void.entropy.sip", "", `{"amount": 10}`)
	}
	dry := invokeOK(t, reg, ctx, "void.entropy.sip", "", "")
	if numField(dry, "granted") != 0 || !field(dry, "exhausted").GetBoolValue() {
		t.Fatalf("sip from an empty pool: %v", dry)
	}
	clock.Advance(5 * time.Minute)
	if r := numField(invokeOK(t, reg, ctx, "void.entropy.manifest", "", ""), "remaining"); r != 5 {
		t.Fatalf("after 5 minutes: %v", r)
	}
	if tithe := invokeOK(t, reg, ctx, "void.entropy.tithe", "", `{"amount": 100}`); numField(tithe, "accepted") != 95 || numField(tithe, "remaining") != 100 {
		t.Fatalf("tithe: %v", tithe)
	}
	if _, err := reg.Invoke(ctx, agentese.Request{Path: "void.entropy.sip", Kwargs: kwargs(t, `{"amount": 11}`)}); agentese.KindOf(err) != agentese.KindArgument {
		t.Fatalf("oversized sip: %v", err)
	}
	// The same tenant's first draw gives the same sample in another
	// registry; another tenant's differs.
	again := invokeOK(t, newRegistry(), ctx, "void.entropy.sip", "", "")
	other := invokeOK(t, reg, ctxAs(t, carol), "void.entropy.sip", "", "")
	if strField(again, "seed") != strField(first, "seed") || strField(other, "seed") == strField(first, "seed") {
		t.Fatalf("seeds: first %s, again %s, other tenant %s", strField(first, "seed"), strField(again, "seed"), strField(other, "seed"))
	}
}

func TestCache(t *testing.T) {
	t.Parallel()
	clock := newClock()
	reg := newRegistry(agentese.WithClock(clock.Now), agentese.WithCache(16, time.Minute))
	invoke := func(ctx context.Context, path, archetype, js string) agentese.Result {
		t.Helper()
		res, err := reg.Invoke(ctx, agentese.Request{Path: path, Archetype: archetype, Kwargs: kwargs(t, js)})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	cb, cc := ctxAs(t, bob), ctxAs(t, carol)
	first := invoke(cb, "concept.justice.define", "", "")
	second := invoke(cb, "concept.justice.define", "", "")
	if first.Cached || !second.Cached || second.Value != first.Value {
		t.Fatalf("repeat read: cached %v then %v", first.Cached, second.Cached)
	}
	for name, res := range map[string]agentese.Result{
		"another archetype": invoke(cb, "concept.justice.define", "architect", ""),
		"another tenant":    invoke(cc, "concept.justice.define", "", ""),
		"other kwargs":      invoke(cb, "void.serendipity.suggest", "", `{"topic": "a"}`),
		"state-dependent":   invoke(cb, "world.house.manifest", "", ""),
	} {
		if res.Cached {
			t.Errorf("%s: served from cache", name)
		}
	}
	if !invoke(cb, "void.serendipity.suggest", "", `{"topic": "a"}`).Cached || invoke(cb, "void.serendipity.suggest", "", `{"topic": "b"}`).Cached {
		t.Error("kwargs are not part of the key")
	}
	if invoke(cb, "world.house.manifest", "", "").Cached {
		t.Error("world.house.manifest depends on state and must not be cached")
	}
	clock.Advance(time.Minute)
	if invoke(cb, "concept.justice.define", "", "").Cached {
		t.Error("served after the TTL")
	}
	// The trace records a cached read as cached.
	invoke(cb, "concept.justice.define", "", "")
	trace := invoke(cb, "time.trace.recent", "", `{"limit": 1, "prefix": "concept"}`)
	if e := field(trace.Value, "entries").GetListValue().GetValues(); len(e) != 1 || !field(e[0], "cached").GetBoolValue() {
		t.Errorf("trace of a cached read: %v", e)
	}
	off := newRegistry(agentese.WithCache(0, 0))
	for range 2 {
		if res, _ := off.Invoke(cb, agentese.Request{Path: "concept.justice.define"}); res.Cached {
			t.Fatal("disabled cache served a result")
		}
	}
}

// TestTenantStateIsBounded: beyond WithMaxTenants, the least recently
// active tenant's state is dropped.
func TestTenantStateIsBounded(t *testing.T) {
	t.Parallel()
	reg := newRegistry(agentese.WithMaxTenants(2))
	ctxFor := func(tenant string) context.Context {
		return ctxWith(&tenancy.Identity{TenantID: tenant, Scopes: tenancy.ScopeRead | tenancy.ScopeWrite, Archetypes: []string{"developer"}})
	}
	for _, tenant := range []string{"a", "b", "a", "c"} {
		invokeOK(t, reg, ctxFor(tenant), "void.entropy.sip", "", `{"amount": 10}`)
	}
	remaining := func(tenant string) float64 {
		return numField(invokeOK(t, reg, ctxFor(tenant), "void.entropy.manifest", "", ""), "remaining")
	}
	// a was used last before c, so b was evicted when c arrived.
	if r := remaining("a"); r != 80 {
		t.Errorf("tenant a: %v, want 80", r)
	}
	if r := remaining("b"); r != 100 {
		t.Errorf("tenant b (evicted): %v, want a fresh pool", r)
	}
}

// TestTrace: every invocation of a tenant is recorded (bounded), failures
// with their kind, and read back by time.trace, time.past and witness.
func TestTrace(t *testing.T) {
	t.Parallel()
	clock := newClock()
	reg := newRegistry(agentese.WithClock(clock.Now))
	ctx := ctxAs(t, bob)
	for range 70 {
		invokeOK(t, reg, ctx, "world.house.manifest", "", "")
		clock.Advance(time.Second)
	}
	_, _ = reg.Invoke(ctx, agentese.Request{Path: "world.house.demolish"})                    // not afforded
	_, _ = reg.Invoke(ctx, agentese.Request{Path: "world.house.manifest", Archetype: "poet"}) // not the key's
	_, _ = reg.Invoke(ctx, agentese.Request{Path: "nowhere.x.y"})                             // never parsed: not recorded
	tm := invokeOK(t, reg, ctx, "time.trace.manifest", "", "")
	if numField(tm, "held") != agentese.TraceCapacity || numField(tm, "recorded") != 72 {
		t.Fatalf("trace totals: held %v recorded %v", field(tm, "held"), field(tm, "recorded"))
	}
	recent := field(tm, "recent").GetListValue().GetValues()
	if len(recent) != 20 || strField(recent[0], "outcome") != "archetype_denied" || strField(recent[1], "outcome") != "not_afforded" ||
		strField(recent[1], "path") != "world.house.demolish" || strField(recent[2], "outcome") != "ok" {
		t.Fatalf("recent (newest first): %v", recent[:3])
	}
	past := invokeOK(t, reg, ctx, "time.past.manifest", "", "")
	if numField(past, "invocations") != 73 || numField(past, "errors") != 2 || numField(field(past, "by_context"), "world") != 72 {
		t.Fatalf("time.past: %v", past)
	}
	w := invokeOK(t, reg, ctx, "world.house.witness", "", `{"limit": 3}`)
	if numField(w, "invocations") != 70 || len(field(w, "recent").GetListValue().GetValues()) != 3 {
		t.Fatalf("witness: %v", w)
	}
	recall := invokeOK(t, reg, ctx, "time.past.recall", "", `{"minutes": 1}`)
	if n := numField(recall, "invocations"); n < 59 || n > 64 {
		t.Fatalf("recall of the last minute: %v", n)
	}
	if other := invokeOK(t, reg, ctxAs(t, carol), "time.trace.manifest", "", ""); numField(other, "recorded") != 0 {
		t.Fatalf("another tenant sees bob's trace: %v", other)
	}
}

func TestMemory(t *testing.T) {
	t.Parallel()
	clock := newClock()
	reg := newRegistry(agentese.WithClock(clock.Now))
	ctx := ctxAs(t, bob)
	invokeOK(t, reg, ctx, "self.memory.engram", "", `{"key": "pref.tea", "content": "green, no sugar"}`)
	clock.Advance(10 * time.Minute)
	invokeOK(t, reg, ctx, "self.memory.engram", "", `{"key": "pref.tea2", "content": "green, no sugar"}`)
	invokeOK(t, reg, ctx, "self.memory.engram", "", `{"key": "todo", "content": "ship it"}`)
	if r := invokeOK(t, reg, ctx, "self.memory.recall", "", `{"key": "todo"}`); strField(r, "content") != "ship it" || !field(r, "found").GetBoolValue() {
		t.Fatalf("recall: %v", r)
	}
	if r := invokeOK(t, reg, ctx, "self.memory.recall", "", `{"prefix": "pref"}`); numField(r, "count") != 2 {
		t.Fatalf("recall by prefix: %v", r)
	}
	if c := invokeOK(t, reg, ctx, "self.memory.consolidate", "", ""); len(field(c, "merged").GetListValue().GetValues()) != 1 || numField(c, "entries") != 2 {
		t.Fatalf("consolidate: %v", c)
	}
	if p := invokeOK(t, reg, ctx, "self.memory.prune", "", `{"older_than_minutes": 5}`); !slices.Equal(listStrings(field(p, "removed")), []string{"pref.tea"}) {
		t.Fatalf("prune by age: %v", p)
	}
	if _, err := reg.Invoke(ctx, agentese.Request{Path: "self.memory.prune"}); agentese.KindOf(err) != agentese.KindArgument {
		t.Fatalf("prune with nothing to prune by: %v", err)
	}
	for i := range 31 {
		invokeOK(t, reg, ctx, "self.memory.engram", "", fmt.Sprintf(`{"key": "k%d", "content": "c"}`, i))
	}
	if _, err := reg.Invoke(ctx, agentese.Request{Path: "self.memory.engram", Kwargs: kwargs(t, `{"key": "full", "content": "c"}`)}); agentese.KindOf(err) != agentese.KindPrecondition {
		t.Fatalf("engram into a full memory: %v", err)
	}
	if m := invokeOK(t, reg, ctx, "self.memory.manifest", "", ""); numField(m, "entries") != 32 || numField(m, "capacity") != 32 {
		t.Fatalf("manifest: %v", m)
	}
}

func TestFuture(t *testing.T) {
	t.Parallel()
	clock := newClock() // 2026-11-22 09:30 UTC, a Sunday
	reg := newRegistry(agentese.WithClock(clock.Now))
	ctx := ctxAs(t, bob)
	m := invokeOK(t, reg, ctx, "time.future.manifest", "", "")
	if strField(m, "next_daily_reset") != "2026-11-23T00:00:00Z" || strField(m, "next_monthly_reset") != "2026-12-01T00:00:00Z" ||
		numField(m, "seconds_to_daily") != 14.5*3600 {
		t.Fatalf("manifest: %v", m)
	}
	s := invokeOK(t, reg, ctx, "time.future.schedule", "", `{"what": "renew the certificate", "at": "2026-11-30T12:00:00+02:00"}`)
	if strField(s, "at") != "2026-11-30T10:00:00Z" || numField(s, "id") != 1 {
		t.Fatalf("schedule: %v", s)
	}
	f := invokeOK(t, reg, ctx, "time.future.forecast", "", `{"days": 10}`)
	days := field(f, "days").GetListValue().GetValues()
	if len(days) != 10 || strField(days[0], "date") != "2026-11-22" || len(listStrings(field(days[0], "events"))) != 0 {
		t.Fatalf("forecast day 0: %v", days[0])
	}
	if ev := listStrings(field(days[8], "events")); !slices.Contains(ev, "10:00 #1 renew the certificate") {
		t.Fatalf("forecast 2026-11-30: %v", ev)
	}
	if ev := listStrings(field(days[9], "events")); len(ev) != 2 || !strings.Contains(ev[1], "monthly token quota") {
		t.Fatalf("forecast 2026-12-01: %v", ev)
	}
	for _, at := range []string{"tomorrow", "2026-11-22T09:00:00Z", "2028-01-01T00:00:00Z"} {
		if _, err := reg.Invoke(ctx, agentese.Request{Path: "time.future.schedule",
			Kwargs: kwargs(t, `{"what": "x", "at": "`+at+`"}`)}); agentese.KindOf(err) != agentese.KindArgument {
			t.Errorf("schedule at %s: %v", at, err)
		}
	}
	if c := invokeOK(t, reg, ctx, "time.future.cancel", "", `{"id": 1}`); !field(c, "cancelled").GetBoolValue() {
		t.Fatalf("cancel: %v", c)
	}
	clock.Advance(9 * 24 * time.Hour)
	if n := len(field(invokeOK(t, reg, ctx, "time.future.manifest", "", ""), "scheduled").GetListValue().GetValues()); n != 0 {
		t.Fatalf("%d items scheduled", n)
	}
}

func TestSelfNodes(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	ca, cc := ctxAs(t, alice), ctxAs(t, carol)
	check := invokeOK(t, reg, ca, "self.capabilities.check", "", `{"path": "world.house.build"}`)
	if field(check, "allowed").GetBoolValue() || strField(check, "needs_scope") != "write" ||
		!slices.Equal(listStrings(field(check, "reasons")), []string{"this key lacks the write scope"}) {
		t.Fatalf("alice may build? %v", check)
	}
	check = invokeOK(t, reg, ca, "self.capabilities.check", "", `{"path": "world.house.demolish"}`)
	if reasons := listStrings(field(check, "reasons")); len(reasons) != 2 || !strings.Contains(reasons[1], "afforded to architect") {
		t.Fatalf("alice may demolish? %v", check)
	}
	check = invokeOK(t, reg, ca, "self.capabilities.check", "", `{"path": "World.house.manifest"}`)
	if reasons := listStrings(field(check, "reasons")); len(reasons) != 1 || !strings.Contains(reasons[0], `Did you mean "world.house.manifest"`) {
		t.Fatalf("check of a bad path: %v", check)
	}
	if c := invokeOK(t, reg, cc, "self.capabilities.check", "", `{"path": "self.soul.challenge"}`); !field(c, "allowed").GetBoolValue() {
		t.Fatalf("carol may challenge? %v", c)
	}
	id := invokeOK(t, reg, ca, "self.identity.manifest", "", "")
	if strField(id, "tenant_id") != tenancy.DevTenantFree || strField(id, "tier") != "free" || !slices.Equal(listStrings(field(id, "scopes")), []string{"read"}) {
		t.Fatalf("identity: %v", id)
	}
	cap := invokeOK(t, reg, ca, "self.capabilities.manifest", "", "")
	if !slices.Equal(listStrings(field(cap, "budgets")), []string{"dormant", "whisper"}) || field(cap, "write").GetBoolValue() {
		t.Fatalf("capabilities: %v", cap)
	}

	invokeOK(t, reg, cc, "self.semaphore.raise", "", `{"name": "approve-deploy", "reason": "production"}`)
	invokeOK(t, reg, cc, "void.gratitude.thank", "", `{"to": "the reviewers"}`)
	st := invokeOK(t, reg, cc, "self.state.manifest", "", "")
	if numField(st, "flags_raised") != 1 || numField(st, "thanks") != 1 {
		t.Fatalf("state: %v", st)
	}
	if _, err := reg.Invoke(cc, agentese.Request{Path: "self.state.reset"}); agentese.KindOf(err) != agentese.KindNotAfforded {
		t.Fatalf("reset as developer: %v", err)
	}
	invokeOK(t, reg, cc, "self.state.reset", "admin", "")
	if st := invokeOK(t, reg, cc, "self.state.manifest", "", ""); numField(st, "flags_raised") != 0 || numField(st, "thanks") != 0 {
		t.Fatalf("state after reset: %v", st)
	}
	if l := invokeOK(t, reg, cc, "self.semaphore.lower", "", `{"name": "approve-deploy"}`); field(l, "lowered").GetBoolValue() {
		t.Fatalf("lowered a flag that reset forgot: %v", l)
	}
	d := invokeOK(t, reg, cc, "self.dashboard.manifest", "", "")
	for _, part := range []string{"identity", "vitals", "state", "recent"} {
		if field(d, part) == nil {
			t.Fatalf("dashboard lacks %s", part)
		}
	}
}

func TestSerendipityIsDeterministic(t *testing.T) {
	t.Parallel()
	a := invokeOK(t, newRegistry(), ctxAs(t, bob), "void.serendipity.suggest", "", `{"topic": "rate limits"}`)
	b := invokeOK(t, newRegistry(), ctxAs(t, carol), "void.serendipity.suggest", "", `{"topic": "rate limits"}`)
	c := invokeOK(t, newRegistry(), ctxAs(t, bob), "void.serendipity.suggest", "", `{"topic": "gardening"}`)
	if strField(a, "prompt") != strField(b, "prompt") || strField(a, "wander_to") != strField(b, "wander_to") {
		t.Fatalf("same topic, different suggestions: %v / %v", a, b)
	}
	if strField(a, "wander_to") == strField(c, "wander_to") && strField(a, "prompt") == strField(c, "prompt") {
		t.Fatalf("different topics, same suggestion: %v", c)
	}
	if _, err := agentese.ParseAspect(strField(a, "wander_to")); err != nil {
		t.Fatalf("wander_to is not a path: %v", err)
	}
}

// TestConcurrentInvocations exercises shared state under the race detector.
func TestConcurrentInvocations(t *testing.T) {
	t.Parallel()
	reg := newRegistry(agentese.WithMaxTenants(3))
	paths := []struct{ path, js string }{
		{"world.house.build", ""}, {"world.house.manifest", ""}, {"void.entropy.sip", ""}, {"concept.recursion.define", ""},
		{"self.memory.engram", `{"key": "k", "content": "c"}`}, {"time.trace.manifest", ""}, {"self.dashboard.manifest", ""},
		{"self.soul.reflect", `{"message": "hello there"}`},
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := ctxWith(&tenancy.Identity{TenantID: fmt.Sprintf("t%d", g%5), Scopes: tenancy.ScopeRead | tenancy.ScopeWrite,
				Archetypes: []string{"developer"}, Limits: tenancy.DefaultTiers()[tenancy.TierPro]})
			for i := range 200 {
				p := paths[(g+i)%len(paths)]
				if _, err := reg.Invoke(ctx, agentese.Request{Path: p.path, Kwargs: kwargs(t, p.js)}); err != nil {
					t.Errorf("%s: %v", p.path, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
