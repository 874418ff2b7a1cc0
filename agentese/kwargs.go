package agentese

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Limits on an invocation's kwargs (SPEC §4.1), checked before anything else.
const (
	// MaxKwargsBytes is the largest kwargs Struct, in protobuf-encoded bytes.
	MaxKwargsBytes = 64 << 10
	// MaxKwargsDepth is the deepest nesting: the kwargs object itself is
	// depth 1, each object or list inside it adds one.
	MaxKwargsDepth = 16
)

// KwargType is the JSON type a kwarg must have.
type KwargType uint8

// The kwarg types.
const (
	TypeString KwargType = iota + 1
	TypeNumber
	TypeInteger // a number with no fractional part, |n| <= 2^53
	TypeBool
	TypeObject
	TypeList
)

func (t KwargType) String() string {
	switch t {
	case TypeString:
		return "string"
	case TypeNumber:
		return "number"
	case TypeInteger:
		return "integer"
	case TypeBool:
		return "boolean"
	case TypeObject:
		return "object"
	case TypeList:
		return "list"
	}
	return "unknown"
}

// Kwarg declares one keyword argument of an aspect.
type Kwarg struct {
	Name     string
	Type     KwargType
	Required bool
	// MaxLen bounds a string (bytes) or a list (items); 0 leaves only the
	// envelope limit.
	MaxLen int
	// Enum restricts a string to these values, matched case-insensitively
	// (the aspect sees the lowercase form).
	Enum []string
	// Ranged numbers and integers must lie in [Min, Max].
	Ranged   bool
	Min, Max float64
	// Items is the type of a list's items (0: any).
	Items KwargType
	// Fields are the accepted fields of an object kwarg.
	Fields []Kwarg
	// Doc says what the kwarg is for (docs and affordance listings).
	Doc string
}

// Describe renders the kwarg's contract: `message (string, required, at most 32768 bytes)`.
func (k Kwarg) Describe() string {
	parts := []string{k.Type.String()}
	if k.Required {
		parts = append(parts, "required")
	} else {
		parts = append(parts, "optional")
	}
	switch {
	case k.MaxLen > 0 && k.Type == TypeString:
		parts = append(parts, fmt.Sprintf("at most %d bytes", k.MaxLen))
	case k.MaxLen > 0 && k.Type == TypeList:
		parts = append(parts, fmt.Sprintf("at most %d items", k.MaxLen))
	}
	if len(k.Enum) > 0 {
		parts = append(parts, "one of "+strings.Join(k.Enum, "|"))
	}
	if k.Ranged {
		parts = append(parts, fmt.Sprintf("from %s to %s", fmtNum(k.Min), fmtNum(k.Max)))
	}
	if len(k.Fields) > 0 {
		names := make([]string, len(k.Fields))
		for i, f := range k.Fields {
			names[i] = f.Name
		}
		parts = append(parts, "fields "+strings.Join(names, ", "))
	}
	return k.Name + " (" + strings.Join(parts, ", ") + ")"
}

func fmtNum(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// checkEnvelope enforces the kwargs size and depth limits. It runs before
// the path is even parsed, so an oversized request costs one linear pass.
func checkEnvelope(kw *structpb.Struct) error {
	if kw == nil {
		return nil
	}
	if n := proto.Size(kw); n > MaxKwargsBytes {
		return newError(KindArgument, fmt.Sprintf(
			"kwargs are %d bytes; the limit is %d bytes (64 KiB).", n, MaxKwargsBytes))
	}
	if tooDeep(kw) {
		return newError(KindArgument, fmt.Sprintf(
			"kwargs are nested more than %d levels deep; the limit is %d (the kwargs object itself is level 1).",
			MaxKwargsDepth, MaxKwargsDepth))
	}
	return nil
}

// tooDeep walks the kwargs with an explicit stack (no recursion on input)
// and stops at the first value past MaxKwargsDepth.
func tooDeep(kw *structpb.Struct) bool {
	type item struct {
		v     *structpb.Value
		depth int
	}
	stack := make([]item, 0, 16)
	for _, v := range kw.GetFields() {
		stack = append(stack, item{v, 1})
	}
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		switch k := it.v.GetKind().(type) {
		case *structpb.Value_StructValue:
			if it.depth+1 > MaxKwargsDepth {
				return true
			}
			for _, v := range k.StructValue.GetFields() {
				stack = append(stack, item{v, it.depth + 1})
			}
		case *structpb.Value_ListValue:
			if it.depth+1 > MaxKwargsDepth {
				return true
			}
			for _, v := range k.ListValue.GetValues() {
				stack = append(stack, item{v, it.depth + 1})
			}
		}
	}
	return false
}

// Args are an aspect's validated kwargs: only declared names, each of its
// declared type, enums lowercased. Accessors return the zero value (or the
// given default) for an absent kwarg.
type Args struct {
	fields map[string]*structpb.Value
}

// Has reports whether the kwarg was given (and not null).
func (a Args) Has(name string) bool { _, ok := a.fields[name]; return ok }

// Str returns a string kwarg.
func (a Args) Str(name string) string { return a.fields[name].GetStringValue() }

// Num returns a number kwarg, or def.
func (a Args) Num(name string, def float64) float64 {
	if v, ok := a.fields[name]; ok {
		return v.GetNumberValue()
	}
	return def
}

// Int returns an integer kwarg, or def.
func (a Args) Int(name string, def int) int {
	if v, ok := a.fields[name]; ok {
		return int(v.GetNumberValue())
	}
	return def
}

// Bool returns a boolean kwarg, or def.
func (a Args) Bool(name string, def bool) bool {
	if v, ok := a.fields[name]; ok {
		return v.GetBoolValue()
	}
	return def
}

// Obj returns an object kwarg's validated fields.
func (a Args) Obj(name string) Args {
	if v, ok := a.fields[name]; ok {
		return Args{fields: v.GetStructValue().GetFields()}
	}
	return Args{}
}

// Strs returns a list-of-strings kwarg.
func (a Args) Strs(name string) []string {
	vals := a.fields[name].GetListValue().GetValues()
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = v.GetStringValue()
	}
	return out
}

// validateKwargs checks kw against the aspect's declarations. where names
// the aspect path for messages.
func validateKwargs(specs []Kwarg, kw *structpb.Struct, where string) (Args, error) {
	fields := kw.GetFields()
	if err := unknownKwargs(specs, fields, where, ""); err != nil {
		return Args{}, err
	}
	out := Args{}
	for _, spec := range specs {
		v, err := checkKwarg(spec, fields[spec.Name], where, "")
		if err != nil {
			return Args{}, err
		}
		if v != nil {
			if out.fields == nil {
				out.fields = make(map[string]*structpb.Value, len(specs))
			}
			out.fields[spec.Name] = v
		}
	}
	return out, nil
}

// unknownKwargs refuses names that are not declared, listing the accepted ones.
func unknownKwargs(specs []Kwarg, fields map[string]*structpb.Value, where, prefix string) error {
	var unknown []string
	for name := range fields {
		if !slices.ContainsFunc(specs, func(k Kwarg) bool { return k.Name == name }) {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	shown := make([]string, 0, min(len(unknown), 5))
	for _, n := range unknown[:min(len(unknown), 5)] {
		shown = append(shown, quote(prefix+n))
	}
	more := ""
	if len(unknown) > 5 {
		more = fmt.Sprintf(" and %d more", len(unknown)-5)
	}
	noun := "kwarg"
	if len(unknown) > 1 {
		noun = "kwargs"
	}
	e := newError(KindArgument, fmt.Sprintf("Unknown %s %s%s for %s.", noun, strings.Join(shown, ", "), more, where))
	if len(specs) == 0 {
		e.Msg += " It takes no kwargs."
		return e
	}
	for _, s := range specs {
		e.Options = append(e.Options, prefix+s.Describe())
	}
	e.OptionsLabel = "accepted kwargs"
	return e
}

// checkKwarg validates one value (nil or null: absent) and returns the value
// the aspect will see (nil when absent).
func checkKwarg(spec Kwarg, v *structpb.Value, where, prefix string) (*structpb.Value, error) {
	name := prefix + spec.Name
	if _, isNull := v.GetKind().(*structpb.Value_NullValue); v == nil || v.GetKind() == nil || isNull {
		if spec.Required {
			return nil, newError(KindArgument, fmt.Sprintf("kwarg %q is required for %s: %s.", name, where, spec.Describe()))
		}
		return nil, nil
	}
	bad := func(format string, args ...any) (*structpb.Value, error) {
		return nil, newError(KindArgument, fmt.Sprintf("kwarg %q of %s ", name, where)+fmt.Sprintf(format, args...)+".")
	}
	if got := kindName(v); got != spec.Type.String() && (spec.Type != TypeInteger || got != "number") {
		return bad("must be %s, not %s", withArticle(spec.Type.String()), withArticle(got))
	}
	switch spec.Type {
	case TypeString:
		s := v.GetStringValue()
		if spec.MaxLen > 0 && len(s) > spec.MaxLen {
			return bad("is %d bytes; the limit is %d", len(s), spec.MaxLen)
		}
		if len(spec.Enum) > 0 {
			l := strings.ToLower(strings.TrimSpace(s))
			if !slices.Contains(spec.Enum, l) {
				return bad("must be one of %s, not %s", strings.Join(spec.Enum, ", "), quote(s))
			}
			return structpb.NewStringValue(l), nil
		}
	case TypeNumber, TypeInteger:
		f := v.GetNumberValue()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return bad("must be a finite number")
		}
		if spec.Type == TypeInteger && (f != math.Trunc(f) || math.Abs(f) > 1<<53) {
			return bad("must be a whole number, not %s", fmtNum(f))
		}
		if spec.Ranged && (f < spec.Min || f > spec.Max) {
			return bad("must be from %s to %s, not %s", fmtNum(spec.Min), fmtNum(spec.Max), fmtNum(f))
		}
	case TypeList:
		items := v.GetListValue().GetValues()
		if spec.MaxLen > 0 && len(items) > spec.MaxLen {
			return bad("has %d items; the limit is %d", len(items), spec.MaxLen)
		}
		for i, it := range items {
			if spec.Items != 0 && kindName(it) != spec.Items.String() {
				return bad("item %d must be %s, not %s", i, withArticle(spec.Items.String()), withArticle(kindName(it)))
			}
		}
	case TypeObject:
		return checkObject(spec, v, where, name+".")
	}
	return v, nil
}

// checkObject validates an object kwarg's fields against spec.Fields.
func checkObject(spec Kwarg, v *structpb.Value, where, prefix string) (*structpb.Value, error) {
	fields := v.GetStructValue().GetFields()
	if err := unknownKwargs(spec.Fields, fields, where, prefix); err != nil {
		return nil, err
	}
	out := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(spec.Fields))}
	for _, f := range spec.Fields {
		fv, err := checkKwarg(f, fields[f.Name], where, prefix)
		if err != nil {
			return nil, err
		}
		if fv != nil {
			out.Fields[f.Name] = fv
		}
	}
	return structpb.NewStructValue(out), nil
}

// kindName is the JSON type name of a value.
func kindName(v *structpb.Value) string {
	switch v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return "string"
	case *structpb.Value_NumberValue:
		return "number"
	case *structpb.Value_BoolValue:
		return "boolean"
	case *structpb.Value_StructValue:
		return "object"
	case *structpb.Value_ListValue:
		return "list"
	case *structpb.Value_NullValue:
		return "null"
	}
	return "missing value"
}

// withArticle prefixes a type name with "a" or "an".
func withArticle(s string) string {
	if s != "" && strings.ContainsRune("aeiou", rune(s[0])) {
		return "an " + s
	}
	return "a " + s
}
