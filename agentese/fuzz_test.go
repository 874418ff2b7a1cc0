package agentese_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kgents/kgents-go/agentese"
)

// FuzzParse: the parser never panics; everything it accepts obeys the
// grammar; parsing what it accepted gives the same path back; and every
// rejection is a typed error with a safe message.
//
//	go test -run XXX -fuzz FuzzParse -fuzztime 2m ./agentese/
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"world.house.manifest", "self.soul.challenge", "concept.justice.dialectic", "void.entropy.sip",
		"time.trace.recent", "world.a.b.c.d.e.f.g", "world.house", "world", "",
		"invalid.house.manifest", "World.House.Manifest", "world..house", ".world", "world.",
		"world.house; rm -rf /", "world.house.../../etc/passwd", "world/house/manifest",
		"world\u0430.house.manifest", "world.house.manifest\x00", "world.h\u00e9use", "\xff\xfe",
		"world.1house", "world._x", strings.Repeat("a.", 200), strings.Repeat("w", 300),
		"self.soul.dialogue\u202e", "world.house.${jndi:ldap://x}",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		for minSegs, parse := range []func(string) (agentese.Path, error){agentese.Parse, agentese.ParseNode, agentese.ParseAspect} {
			p, err := parse(in)
			if err != nil {
				k := agentese.KindOf(err)
				if k != agentese.KindSyntax && k != agentese.KindNotFound {
					t.Fatalf("parse(%q): error of kind %v: %v", in, k, err)
				}
				if msg := err.Error(); len(msg) > 1200 || strings.ContainsAny(msg, "\x00\r") {
					t.Fatalf("parse(%q): unsafe message %q", in, msg)
				}
				continue
			}
			checkGrammar(t, in, p, minSegs+1)
			again, err := parse(p.String())
			if err != nil || again.String() != p.String() || again.Len() != p.Len() {
				t.Fatalf("round trip of %q: %q, %v", in, again.String(), err)
			}
		}
	})
}

// checkGrammar restates the grammar independently of the parser.
func checkGrammar(t *testing.T, in string, p agentese.Path, minSegs int) {
	t.Helper()
	if p.String() != in {
		t.Fatalf("accepted %q as %q", in, p.String())
	}
	if len(in) > agentese.MaxPathLen {
		t.Fatalf("accepted %d bytes", len(in))
	}
	segs := strings.Split(in, ".")
	if len(segs) < minSegs || len(segs) > agentese.MaxSegments || p.Len() != len(segs) {
		t.Fatalf("accepted %q with %d segments (min %d)", in, len(segs), minSegs)
	}
	switch segs[0] {
	case "world", "self", "concept", "void", "time":
	default:
		t.Fatalf("accepted context %q", segs[0])
	}
	for i, s := range segs {
		if s == "" || s[0] < 'a' || s[0] > 'z' {
			t.Fatalf("accepted segment %q", s)
		}
		for _, c := range []byte(s) {
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
				t.Fatalf("accepted byte %q in %q", c, in)
			}
		}
		if p.Segment(i) != s {
			t.Fatalf("segment %d = %q, want %q", i, p.Segment(i), s)
		}
	}
}

// FuzzInvoke drives the whole registry with arbitrary paths, archetypes and
// kwargs: it never panics, and every failure is a typed AGENTESE error (or
// a status from the Soul service) with a bounded message.
//
//	go test -run XXX -fuzz FuzzInvoke -fuzztime 1m ./agentese/
func FuzzInvoke(f *testing.F) {
	f.Add("world.house.manifest", "", `{}`)
	f.Add("world.house.demolish", "architect", `{"confirm": true}`)
	f.Add("self.soul.challenge", "developer", `{"message": "hi", "budget": "whisper"}`)
	f.Add("self.soul.governance", "", `{"action": "rm -rf /", "context": {"severity": 2}}`)
	f.Add("time.future.schedule", "", `{"what": "x", "at": "2030-01-01T00:00:00Z"}`)
	f.Add("concept.justice.blend", "artist", `{"with": "entropy"}`)
	f.Add("self.capabilities.check", "", `{"path": "world.house.build"}`)
	f.Add("void.entropy.sip", "", `{"amount": 1e308}`)
	f.Add("world.house; rm -rf /", "\x00", `{"a": [[[[]]]]}`)
	reg := newRegistry()
	ctx := ctxAs(f, carol)
	f.Fuzz(func(t *testing.T, path, archetype, js string) {
		s := &structpb.Struct{}
		if protojson.Unmarshal([]byte(js), s) != nil {
			s = nil
		}
		_, err := reg.Invoke(ctx, agentese.Request{Path: path, Archetype: archetype, Kwargs: s})
		if err == nil {
			return
		}
		if agentese.KindOf(err) == 0 {
			if _, ok := status.FromError(err); !ok {
				t.Fatalf("untyped error for %q %q %s: %v", path, archetype, js, err)
			}
		}
		if len(err.Error()) > 2000 {
			t.Fatalf("message of %d bytes", len(err.Error()))
		}
	})
}
