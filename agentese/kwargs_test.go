package agentese_test

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kgents/kgents-go/agentese"
)

// nested returns kwargs whose objects nest levels deep (the kwargs object
// itself is level 1), through objects or lists.
func nested(levels int, viaList bool) *structpb.Struct {
	v := structpb.NewNumberValue(1)
	for range levels - 1 {
		if viaList {
			v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{v}})
		} else {
			v = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"a": v}})
		}
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{"a": v}}
}

func TestKwargsValidation(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	big := &structpb.Struct{Fields: map[string]*structpb.Value{"message": structpb.NewStringValue(strings.Repeat("x", 70<<10))}}
	nan := &structpb.Struct{Fields: map[string]*structpb.Value{"limit": structpb.NewNumberValue(math.NaN())}}
	cases := []struct {
		name      string
		path      string
		archetype string
		kw        *structpb.Struct
		js        string
		want      []string // substrings of the error; nil: success
	}{
		{name: "no kwargs taken", path: "world.house.manifest", js: `{"x": 1}`,
			want: []string{`Unknown kwarg "x" for world.house.manifest`, "It takes no kwargs"}},
		{name: "unknown kwargs listed, sorted, bounded", path: "time.trace.recent", js: `{"g":1,"f":1,"e":1,"d":1,"c":1,"b":1,"a":1}`,
			want: []string{`Unknown kwargs "a", "b", "c", "d", "e" and 2 more`, "Accepted kwargs: limit (integer, optional, from 1 to 64), prefix (string, optional, at most 256 bytes)"}},
		{name: "unknown kwarg name is escaped", path: "time.trace.recent", js: `{"\u0000\u0430": 1}`,
			want: []string{`"\x00\u0430"`}},
		{name: "wrong type", path: "time.trace.recent", js: `{"limit": "10"}`,
			want: []string{`kwarg "limit" of time.trace.recent must be an integer, not a string`}},
		{name: "fraction for an integer", path: "time.trace.recent", js: `{"limit": 2.5}`, want: []string{"whole number, not 2.5"}},
		{name: "below range", path: "time.trace.recent", js: `{"limit": 0}`, want: []string{"from 1 to 64, not 0"}},
		{name: "above range", path: "time.trace.recent", js: `{"limit": 65}`, want: []string{"from 1 to 64, not 65"}},
		{name: "not finite", path: "time.trace.recent", kw: nan, want: []string{"finite"}},
		{name: "in range", path: "time.trace.recent", js: `{"limit": 64, "prefix": "world"}`},
		{name: "null optional is absent", path: "time.trace.recent", js: `{"limit": null}`},
		{name: "required missing", path: "self.soul.challenge", js: `{}`,
			want: []string{`kwarg "message" is required for self.soul.challenge: message (string, required, at most 32768 bytes)`}},
		{name: "required null", path: "self.soul.challenge", js: `{"message": null}`, want: []string{`"message" is required`}},
		{name: "string too long", path: "void.gratitude.thank", js: `{"to": "` + strings.Repeat("x", 129) + `"}`,
			want: []string{`kwarg "to" of void.gratitude.thank is 129 bytes; the limit is 128`}},
		{name: "enum", path: "self.soul.dialogue", js: `{"message": "hi", "budget": "huge"}`,
			want: []string{"must be one of dormant, whisper, dialogue, deep, not \"huge\""}},
		{name: "enum is case-insensitive", path: "self.soul.dialogue", js: `{"message": "hi", "budget": " WHISPER "}`},
		{name: "boolean", path: "world.house.demolish", archetype: "architect", js: `{"confirm": "yes"}`, want: []string{"must be a boolean, not a string"}},
		{name: "object field type", path: "self.soul.governance", js: `{"action": "x", "context": {"reason": 1}}`,
			want: []string{`kwarg "context.reason" of self.soul.governance must be a string, not a number`}},
		{name: "object unknown field", path: "self.soul.governance", js: `{"action": "x", "context": {"why": "x"}}`,
			want: []string{`Unknown kwarg "context.why"`, "context.reason (string"}},
		{name: "object field range", path: "self.soul.governance", js: `{"action": "x", "context": {"severity": 2}}`,
			want: []string{`"context.severity"`, "from 0 to 1, not 2"}},
		{name: "object where a string goes", path: "self.soul.governance", js: `{"action": {"x": 1}}`,
			want: []string{"must be a string, not an object"}},
		{name: "too big, before anything else", path: "not a path", kw: big,
			want: []string{"kwargs are", "the limit is 65536 bytes (64 KiB)"}},
		{name: "sixteen levels pass the envelope", path: "world.house.manifest", kw: nested(16, false),
			want: []string{`Unknown kwarg "a"`}},
		{name: "seventeen levels of objects", path: "not a path", kw: nested(17, false),
			want: []string{"nested more than 16 levels deep"}},
		{name: "seventeen levels of lists", path: "world.house.manifest", kw: nested(17, true),
			want: []string{"nested more than 16 levels deep"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			kw := tc.kw
			if kw == nil {
				kw = kwargs(t, tc.js)
			}
			_, err := reg.Invoke(ctxAs(t, carol), agentese.Request{Path: tc.path, Archetype: tc.archetype, Kwargs: kw})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Invoke(%s, %s): %v", tc.path, tc.js, err)
				}
				return
			}
			if agentese.KindOf(err) != agentese.KindArgument {
				t.Fatalf("Invoke(%s, %s) = %v, want an argument error", tc.path, tc.js, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			assertSafeMessage(t, err.Error())
		})
	}
}

// TestKwargsListsAndAccessors uses a node of its own for the kwarg shapes
// the built-in nodes do not use.
func TestKwargsListsAndAccessors(t *testing.T) {
	t.Parallel()
	var seen agentese.Args
	run := func(_ context.Context, c *agentese.Call) (agentese.Outcome, error) {
		seen = c.Args
		return agentese.Outcome{Value: structpb.NewBoolValue(true)}, nil
	}
	reg, err := agentese.NewRegistry([]*agentese.Node{{
		Path:   "world.lab",
		Common: []string{"run"},
		Aspects: []*agentese.Aspect{
			{Name: "manifest", Run: run},
			{Name: "run", Run: run, Kwargs: []agentese.Kwarg{
				{Name: "tags", Type: agentese.TypeList, Items: agentese.TypeString, MaxLen: 3},
				{Name: "ok", Type: agentese.TypeBool},
				{Name: "n", Type: agentese.TypeNumber},
			}},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxAs(t, carol)
	invoke := func(js string) error {
		_, err := reg.Invoke(ctx, agentese.Request{Path: "world.lab.run", Kwargs: kwargs(t, js)})
		return err
	}
	if err := invoke(`{"tags": ["a", "b"], "ok": true, "n": 1.5}`); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen.Strs("tags"), []string{"a", "b"}) || !seen.Bool("ok", false) || seen.Num("n", 0) != 1.5 ||
		seen.Has("missing") || seen.Int("missing", 7) != 7 || seen.Str("missing") != "" {
		t.Fatalf("accessors: %+v", seen)
	}
	for js, want := range map[string]string{
		`{"tags": ["a", "b", "c", "d"]}`: "has 4 items; the limit is 3",
		`{"tags": ["a", 1]}`:             "item 1 must be a string, not a number",
		`{"tags": "a"}`:                  "must be a list, not a string",
	} {
		if err := invoke(js); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", js, err, want)
		}
	}
}
