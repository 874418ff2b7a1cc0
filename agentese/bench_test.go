package agentese_test

import (
	"testing"

	"github.com/kgents/kgents-go/agentese"
)

func BenchmarkParseAspect(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := agentese.ParseAspect("world.house.manifest"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResolve(b *testing.B) {
	reg := newRegistry()
	ctx := ctxAs(b, bob)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := reg.Resolve(ctx, "world.house"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInvokeManifest is a cheap read: kwargs envelope, parse, observer,
// node, affordance, kwargs, the aspect (per-tenant state) and the trace.
func BenchmarkInvokeManifest(b *testing.B) {
	reg := newRegistry()
	ctx := ctxAs(b, bob)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := reg.Invoke(ctx, agentese.Request{Path: "world.house.manifest"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseResolveInvoke is what a client resolving then invoking
// does: parse, resolve the node, invoke its manifest.
func BenchmarkParseResolveInvoke(b *testing.B) {
	reg := newRegistry()
	ctx := ctxAs(b, bob)
	b.ReportAllocs()
	for b.Loop() {
		p, err := agentese.ParseAspect("world.house.manifest")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := reg.Resolve(ctx, p.Node().String()); err != nil {
			b.Fatal(err)
		}
		if _, err := reg.Invoke(ctx, agentese.Request{Path: p.String()}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInvokeCached is a cacheable pure read served from the cache.
func BenchmarkInvokeCached(b *testing.B) {
	reg := newRegistry()
	ctx := ctxAs(b, bob)
	if _, err := reg.Invoke(ctx, agentese.Request{Path: "concept.justice.define"}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if res, err := reg.Invoke(ctx, agentese.Request{Path: "concept.justice.define"}); err != nil || !res.Cached {
			b.Fatalf("not cached: %v", err)
		}
	}
}

// BenchmarkInvokeTypo is the error path with a suggestion (edit distance
// over every registered aspect path).
func BenchmarkInvokeTypo(b *testing.B) {
	reg := newRegistry()
	ctx := ctxAs(b, bob)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := reg.Invoke(ctx, agentese.Request{Path: "world.hosue.manifset"}); err == nil {
			b.Fatal("no error")
		}
	}
}
