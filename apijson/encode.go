package apijson

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Marshal encodes m as API JSON.
func Marshal(m proto.Message) ([]byte, error) {
	return AppendMessage(make([]byte, 0, 256), m), nil
}

// AppendMessage appends the API JSON of m to b. A nil message is null.
func AppendMessage(b []byte, m proto.Message) []byte {
	if m == nil || !m.ProtoReflect().IsValid() {
		return append(b, "null"...)
	}
	e := encoderPool.Get().(*encoder)
	defer encoderPool.Put(e)
	e.out = *bytes.NewBuffer(b) // the tokenizer appends to b in place
	e.enc.Reset(&e.out, encodeOptions...)
	e.err = nil
	e.message(m.ProtoReflect())
	if e.err != nil {
		// Every string is accepted (invalid UTF-8 becomes U+FFFD), so only
		// a token out of place, a bug here, gets this far.
		panic("apijson: " + e.err.Error())
	}
	out := bytes.TrimSuffix(e.out.Bytes(), []byte{'\n'}) // the stream's separator
	e.out = bytes.Buffer{}
	return out
}

// encodeOptions: invalid UTF-8 is written as U+FFFD; U+2028 and U+2029 are
// escaped so the output is safe to embed in JavaScript; names are ours and
// unique, so not checked.
var encodeOptions = []jsontext.Options{
	jsontext.AllowInvalidUTF8(true), jsontext.EscapeForJS(true), jsontext.AllowDuplicateNames(true),
}

// encoder writes a message's tokens; err keeps the first failure.
type encoder struct {
	enc     jsontext.Encoder
	out     bytes.Buffer
	scratch []byte
	err     error
}

var encoderPool = sync.Pool{New: func() any { return new(encoder) }}

func (e *encoder) token(t jsontext.Token) {
	if err := e.enc.WriteToken(t); err != nil && e.err == nil {
		e.err = err
	}
}

// raw writes a value this package formatted itself (into e.scratch).
func (e *encoder) raw(v []byte) {
	if err := e.enc.WriteValue(v); err != nil && e.err == nil {
		e.err = err
	}
}

func (e *encoder) message(m protoreflect.Message) {
	md := m.Descriptor()
	if w := wellKnown(md.FullName()); w != notWKT {
		e.wellKnown(w, m)
		return
	}
	e.token(jsontext.BeginObject)
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && !m.Has(fd) {
			continue // only the member that is set speaks for a oneof
		}
		e.token(jsontext.String(string(fd.Name())))
		e.field(m, fd)
	}
	e.token(jsontext.EndObject)
}

func (e *encoder) field(m protoreflect.Message, fd protoreflect.FieldDescriptor) {
	switch {
	case fd.IsList():
		l := m.Get(fd).List()
		e.token(jsontext.BeginArray)
		for i := 0; i < l.Len(); i++ {
			e.singular(fd, l.Get(i))
		}
		e.token(jsontext.EndArray)
	case fd.IsMap():
		mp := m.Get(fd).Map()
		keys := make([]protoreflect.MapKey, 0, mp.Len())
		mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
			keys = append(keys, k)
			return true
		})
		slices.SortFunc(keys, compareKeys(fd.MapKey().Kind())) // stable output
		e.token(jsontext.BeginObject)
		for _, k := range keys {
			e.token(jsontext.String(k.String()))
			e.singular(fd.MapValue(), mp.Get(k))
		}
		e.token(jsontext.EndObject)
	case fd.HasPresence() && !m.Has(fd):
		e.token(jsontext.Null) // an unset optional scalar or message
	default:
		e.singular(fd, m.Get(fd))
	}
}

func compareKeys(kind protoreflect.Kind) func(a, b protoreflect.MapKey) int {
	switch kind {
	case protoreflect.StringKind:
		return func(a, b protoreflect.MapKey) int { return strings.Compare(a.String(), b.String()) }
	case protoreflect.BoolKind:
		return func(a, b protoreflect.MapKey) int { return cmp.Compare(a.String(), b.String()) } // false < true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return func(a, b protoreflect.MapKey) int { return cmp.Compare(a.Uint(), b.Uint()) }
	default:
		return func(a, b protoreflect.MapKey) int { return cmp.Compare(a.Int(), b.Int()) }
	}
}

func (e *encoder) singular(fd protoreflect.FieldDescriptor, v protoreflect.Value) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		e.token(jsontext.Bool(v.Bool()))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		e.token(jsontext.Int(v.Int())) // numbers, 64-bit ones too
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		e.token(jsontext.Uint(v.Uint()))
	case protoreflect.FloatKind:
		e.double(v.Float(), 32)
	case protoreflect.DoubleKind:
		e.double(v.Float(), 64)
	case protoreflect.StringKind:
		e.token(jsontext.String(v.String()))
	case protoreflect.BytesKind:
		e.scratch = append(e.scratch[:0], '"')
		e.scratch = base64.StdEncoding.AppendEncode(e.scratch, v.Bytes())
		e.raw(append(e.scratch, '"'))
	case protoreflect.EnumKind:
		e.enum(fd.Enum(), v.Enum())
	default:
		e.message(v.Message())
	}
}

func (e *encoder) enum(ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber) {
	if ed.FullName() == "google.protobuf.NullValue" {
		e.token(jsontext.Null)
		return
	}
	if name, ok := enumNamesOf(ed).byNumber[n]; ok {
		e.token(jsontext.String(name))
		return
	}
	e.token(jsontext.Int(int64(n))) // a number this build does not know
}

// double writes a float or double field as Python's json module writes a
// float: always with a decimal point or an exponent (0.0, 1.0, 1e+21), so a
// Python client reads a float where the Python service sent one. NaN and
// the infinities, which JSON cannot carry, are strings, as in protojson.
// Numbers in google.protobuf.Value (AGENTESE results) have no declared type
// and are written plainly (3, not 3.0).
func (e *encoder) double(f float64, bits int) {
	if f == math.Trunc(f) && math.Abs(f) < 1e21 { // written without a point or exponent
		e.scratch = append(jsontext.AppendFloat(e.scratch[:0], f, bits), '.', '0')
		e.raw(e.scratch)
		return
	}
	if bits == 32 {
		e.token(jsontext.Float32(float32(f)))
		return
	}
	e.token(jsontext.Float(f)) // NaN and the infinities as strings
}

// AppendTimestamp writes t as the API's timestamp string: RFC 3339 with
// microseconds and an explicit +00:00, which every Python version's
// datetime.fromisoformat reads.
func AppendTimestamp(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000")
	b = append(b, "+00:00"...)
	return append(b, '"')
}

// AppendString appends s as a JSON string; invalid UTF-8 is written as
// U+FFFD.
func AppendString(b []byte, s string) []byte {
	b, _ = jsontext.AppendQuote(b, s) // its only error: invalid UTF-8, replaced
	return b
}
