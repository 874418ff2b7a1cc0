package agentese_test

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/kgents/kgents-go/agentese"
)

func TestParseGrammar(t *testing.T) {
	t.Parallel()
	long256 := "world." + strings.Repeat("a", 250) // 256 bytes
	type parseFunc func(string) (agentese.Path, error)
	aspect, node, anyPath := agentese.ParseAspect, agentese.ParseNode, agentese.Parse
	cases := []struct {
		name  string
		parse parseFunc
		in    string
		kind  agentese.Kind // 0: valid
		// wantMsg are substrings the error must contain.
		wantMsg []string
		segs    int
	}{
		{"aspect path", aspect, "world.house.manifest", 0, nil, 3},
		{"flagship", aspect, "self.soul.challenge", 0, nil, 3},
		{"every context", aspect, "time.trace.recent", 0, nil, 3},
		{"digits and underscores after the first letter", aspect, "concept.h0use_2.x_1", 0, nil, 3},
		{"eight segments", aspect, "world.a.b.c.d.e.f.g", 0, nil, 8},
		{"256 bytes", node, long256, 0, nil, 2},
		{"node path", node, "world.house", 0, nil, 2},
		{"node path with more", node, "world.house.kitchen", 0, nil, 3},
		{"bare context", anyPath, "void", 0, nil, 1},

		{"empty", aspect, "", agentese.KindSyntax, []string{"empty", "world.house.manifest"}, 0},
		{"context only for invoke", aspect, "world", agentese.KindSyntax, []string{"Path must include aspect", "only a context"}, 0},
		{"node for invoke", aspect, "world.house", agentese.KindSyntax, []string{"Path must include aspect", "world.house.manifest"}, 0},
		{"context only for resolve", node, "world", agentese.KindSyntax, []string{"context.holon"}, 0},
		{"nine segments", aspect, "world.a.b.c.d.e.f.g.h", agentese.KindSyntax, []string{"more than 8 segments"}, 0},
		{"257 bytes", node, long256 + "a", agentese.KindSyntax, []string{"257 bytes", "limit is 256"}, 0},
		{"leading dot", aspect, ".world.house.manifest", agentese.KindSyntax, []string{"segment 1 is empty"}, 0},
		{"double dot", aspect, "world..house.manifest", agentese.KindSyntax, []string{"segment 2 is empty"}, 0},
		{"trailing dot", aspect, "world.house.manifest.", agentese.KindSyntax, []string{"segment 4 is empty"}, 0},
		{"uppercase", aspect, "World.house.manifest", agentese.KindSyntax, []string{"uppercase 'W' at position 1"}, 0},
		{"digit first", aspect, "world.1house.manifest", agentese.KindSyntax, []string{"start with a letter", "position 7"}, 0},
		{"underscore first", aspect, "world._house.manifest", agentese.KindSyntax, []string{"start with a letter"}, 0},
		{"hyphen", aspect, "world.house-x.manifest", agentese.KindSyntax, []string{"character '-' at position 12"}, 0},
		{"space", aspect, " world.house.manifest", agentese.KindSyntax, []string{"a space at position 1"}, 0},
		{"newline", aspect, "world.house.manifest\n", agentese.KindSyntax, []string{"control character U+000A"}, 0},
		{"NUL byte", aspect, "world.house.manifest\x00", agentese.KindSyntax, []string{"control character U+0000", `\x00`}, 0},
		{"NUL in the middle", aspect, "world.ho\x00use.manifest", agentese.KindSyntax, []string{"U+0000 at position 9"}, 0},
		{"Cyrillic a", aspect, "world.house.m\u0430nifest", agentese.KindSyntax, []string{"non-ASCII character U+0430", "look-alike"}, 0},
		{"Cyrillic in context", aspect, "w\u043erld.house.manifest", agentese.KindSyntax, []string{"U+043E at position 2"}, 0},
		{"accented letter", aspect, "world.h\u00e9use.manifest", agentese.KindSyntax, []string{"U+00E9"}, 0},
		{"right-to-left override", aspect, "world.house.manifest\u202e", agentese.KindSyntax, []string{"U+202E"}, 0},
		{"fullwidth dot", aspect, "world\uff0ehouse\uff0emanifest", agentese.KindSyntax, []string{"U+FF0E"}, 0},
		{"invalid UTF-8", aspect, "world.house.\xffmanifest", agentese.KindSyntax, []string{"invalid UTF-8 byte"}, 0},
		{"shell injection", aspect, "world.house; rm -rf /", agentese.KindSyntax, []string{"character ';' at position 12"}, 0},
		{"traversal", aspect, "world.house.../../etc/passwd", agentese.KindSyntax, []string{"segment 3 is empty"}, 0},
		{"slash traversal", aspect, "world/house/manifest", agentese.KindSyntax, []string{"character '/'"}, 0},
		{"url encoded", aspect, "world.house.%2e%2e", agentese.KindSyntax, []string{"character '%'"}, 0},
		{"template injection", aspect, "world.house.${jndi:ldap}", agentese.KindSyntax, []string{"character '$'"}, 0},
		{"10,000 segments", aspect, strings.Repeat("a.", 9999) + "a", agentese.KindSyntax, []string{"19999 bytes", "limit is 256"}, 0},

		{"unknown context", aspect, "invalid.house.manifest", agentese.KindNotFound, []string{`unknown context "invalid"`, "world, self, concept, void, time"}, 0},
		{"plural context", node, "worlds.house", agentese.KindNotFound, []string{"Valid contexts"}, 0},
		{"unknown context, two segments", node, "invalid.context", agentese.KindNotFound, []string{`"invalid"`}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := tc.parse(tc.in)
			if tc.kind == 0 {
				if err != nil {
					t.Fatalf("parse(%q): %v", tc.in, err)
				}
				if p.String() != tc.in || p.Len() != tc.segs {
					t.Fatalf("parse(%q) = %q with %d segments, want %d", tc.in, p.String(), p.Len(), tc.segs)
				}
				return
			}
			var e *agentese.Error
			if !errors.As(err, &e) {
				t.Fatalf("parse(%q) = %v, want an *agentese.Error of kind %v", tc.in, err, tc.kind)
			}
			if e.Kind != tc.kind {
				t.Fatalf("parse(%q): kind %v (%v), want %v", tc.in, e.Kind, err, tc.kind)
			}
			for _, want := range tc.wantMsg {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("parse(%q) error %q does not contain %q", tc.in, err, want)
				}
			}
			if tc.kind == agentese.KindSyntax && !strings.Contains(tc.name, "context only") && !strings.Contains(tc.name, "node for") &&
				!strings.Contains(err.Error(), "[a-z][a-z0-9_]*") {
				t.Errorf("syntax error does not restate the grammar: %q", err)
			}
			assertSafeMessage(t, err.Error())
		})
	}
}

// assertSafeMessage checks an error text can be returned as is: printable
// ASCII (plus the few typographic characters of our own wording), bounded.
func assertSafeMessage(t *testing.T, msg string) {
	t.Helper()
	if len(msg) > 1200 {
		t.Errorf("message is %d bytes long", len(msg))
	}
	if !utf8.ValidString(msg) {
		t.Errorf("message is not valid UTF-8: %q", msg)
	}
	for _, r := range msg {
		if r > unicode.MaxASCII || (r < 0x20 && r != '\n') {
			t.Errorf("message contains %U: %q", r, msg)
			return
		}
	}
}

func TestPathAccessors(t *testing.T) {
	t.Parallel()
	p, err := agentese.ParseAspect("world.house.kitchen.manifest")
	if err != nil {
		t.Fatal(err)
	}
	if p.Context() != "world" || p.Holon() != "house" || p.Aspect() != "manifest" || p.Len() != 4 {
		t.Fatalf("accessors: %q %q %q %d", p.Context(), p.Holon(), p.Aspect(), p.Len())
	}
	n := p.Node()
	if n.String() != "world.house.kitchen" || n.Len() != 3 || n.Aspect() != "kitchen" {
		t.Fatalf("Node() = %q (%d segments)", n.String(), n.Len())
	}
	if got := strings.Join(p.Segments(), "|"); got != "world|house|kitchen|manifest" {
		t.Fatalf("Segments() = %q", got)
	}
	if p.Segment(-1) != "" || p.Segment(4) != "" {
		t.Fatal("out-of-range Segment is not empty")
	}
	if got := agentese.Contexts(); strings.Join(got, ",") != "world,self,concept,void,time" {
		t.Fatalf("Contexts() = %v", got)
	}
}

// TestParseCostIsBounded: a megabyte path, or one of 10,000 segments, is
// refused by its length before anything is scanned, and the error echoes
// only a bounded prefix.
func TestParseCostIsBounded(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("world.", 1<<20/6)
	reg := newRegistry()
	ctx := ctxAs(t, carol)
	start := time.Now()
	for range 100 {
		if _, err := agentese.ParseAspect(huge); agentese.KindOf(err) != agentese.KindSyntax {
			t.Fatalf("huge path: %v", err)
		}
		_, err := reg.Invoke(ctx, agentese.Request{Path: huge})
		if agentese.KindOf(err) != agentese.KindSyntax {
			t.Fatalf("huge path: %v", err)
		}
		if len(err.Error()) > 1200 {
			t.Fatalf("error echoes too much: %d bytes", len(err.Error()))
		}
	}
	// 100 refusals of a 1 MiB path: linear work would take well over a
	// second; the length check makes it microseconds.
	if d := time.Since(start); d > time.Second {
		t.Fatalf("100 refusals of a 1 MiB path took %v", d)
	}
}
