// Package apijson is the JSON form of the kgents API's messages, as the REST
// surface and the SSE streams speak it. It follows the Python service the API
// replaces rather than protojson's defaults:
//
//   - fields are named by their proto names (snake_case) and zero values are
//     emitted; an unset optional or message field is null, an unset list [];
//   - enums are lowercase strings without their type prefix (MODE_REFLECT is
//     "reflect"), and are read case-insensitively, with or without the prefix;
//   - 64-bit integers are JSON numbers, not strings;
//   - timestamps are RFC 3339 with microseconds and an explicit +00:00 offset,
//     which every Python version's datetime.fromisoformat reads;
//   - unknown fields in a request are ignored; a value of the wrong type is an
//     error that names the field.
//
// It walks messages with protoreflect and writes into a byte slice, which is
// also several times cheaper than protojson on the request hot path.
package apijson

import (
	"encoding/base64"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Marshal encodes m as API JSON.
func Marshal(m proto.Message) ([]byte, error) {
	return AppendMessage(make([]byte, 0, 256), m), nil
}

// AppendMessage appends the API JSON of m to b. A nil message is null.
func AppendMessage(b []byte, m proto.Message) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	r := m.ProtoReflect()
	if !r.IsValid() {
		return append(b, "null"...)
	}
	return appendMessage(b, r)
}

func appendMessage(b []byte, m protoreflect.Message) []byte {
	md := m.Descriptor()
	if w := wellKnown(md.FullName()); w != notWKT {
		return w.encode(b, m)
	}
	b = append(b, '{')
	fields := md.Fields()
	first := true
	for i, n := 0, fields.Len(); i < n; i++ {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && !m.Has(fd) {
			// Only the member that is set speaks for a oneof.
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, fd.Name()...)
		b = append(b, '"', ':')
		b = appendField(b, m, fd)
	}
	return append(b, '}')
}

func appendField(b []byte, m protoreflect.Message, fd protoreflect.FieldDescriptor) []byte {
	switch {
	case fd.IsList():
		l := m.Get(fd).List()
		b = append(b, '[')
		for i, n := 0, l.Len(); i < n; i++ {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendSingular(b, fd, l.Get(i))
		}
		return append(b, ']')
	case fd.IsMap():
		mp := m.Get(fd).Map()
		b = append(b, '{')
		first := true
		// Map order is unspecified in proto; sort keys for stable output.
		keys := make([]protoreflect.MapKey, 0, mp.Len())
		mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
			keys = append(keys, k)
			return true
		})
		sortMapKeys(keys)
		for _, k := range keys {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendString(b, k.String())
			b = append(b, ':')
			b = appendSingular(b, fd.MapValue(), mp.Get(k))
		}
		return append(b, '}')
	case fd.HasPresence() && !m.Has(fd):
		// Unset optional scalars and messages are null.
		return append(b, "null"...)
	default:
		return appendSingular(b, fd, m.Get(fd))
	}
}

func appendSingular(b []byte, fd protoreflect.FieldDescriptor, v protoreflect.Value) []byte {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return strconv.AppendBool(b, v.Bool())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return strconv.AppendInt(b, v.Int(), 10)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return strconv.AppendUint(b, v.Uint(), 10)
	case protoreflect.FloatKind:
		return appendFloat(b, v.Float(), 32)
	case protoreflect.DoubleKind:
		return appendFloat(b, v.Float(), 64)
	case protoreflect.StringKind:
		return appendString(b, v.String())
	case protoreflect.BytesKind:
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, v.Bytes())
		return append(b, '"')
	case protoreflect.EnumKind:
		return appendEnum(b, fd.Enum(), v.Enum())
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return appendMessage(b, v.Message())
	}
	return append(b, "null"...)
}

func appendEnum(b []byte, ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber) []byte {
	if ed.FullName() == "google.protobuf.NullValue" {
		return append(b, "null"...)
	}
	names := enumNamesOf(ed)
	if name, ok := names.byNumber[n]; ok {
		b = append(b, '"')
		b = append(b, name...)
		return append(b, '"')
	}
	// A number this build does not know: say it as a number.
	return strconv.AppendInt(b, int64(n), 10)
}

// appendFloat formats like encoding/json (shortest representation, exponent
// only for very large or small magnitudes). NaN and infinities, which JSON
// cannot carry, are written as protojson does: as strings.
func appendFloat(b []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(b, `"Infinity"`...)
	case math.IsInf(f, -1):
		return append(b, `"-Infinity"`...)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	b = strconv.AppendFloat(b, f, format, -1, bits)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string. Invalid UTF-8 becomes U+FFFD, and
// U+2028/U+2029 are escaped so the output is safe to embed in JavaScript.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// AppendString writes s as a JSON string (see appendString).
func AppendString(b []byte, s string) []byte { return appendString(b, s) }

// AppendTimestamp writes t as the API's timestamp string.
func AppendTimestamp(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000")
	b = append(b, "+00:00"...)
	return append(b, '"')
}

// enumNames caches the JSON names of one enum's values.
type enumNames struct {
	byNumber map[protoreflect.EnumNumber]string
	byName   map[string]protoreflect.EnumNumber // lowercase short and full names
	list     string                             // "reflect, advise, ..." (UNSPECIFIED left out)
}

var enumCache sync.Map // protoreflect.FullName -> *enumNames

func enumNamesOf(ed protoreflect.EnumDescriptor) *enumNames {
	if v, ok := enumCache.Load(ed.FullName()); ok {
		return v.(*enumNames)
	}
	prefix := enumPrefix(string(ed.Name()))
	values := ed.Values()
	en := &enumNames{
		byNumber: make(map[protoreflect.EnumNumber]string, values.Len()),
		byName:   make(map[string]protoreflect.EnumNumber, 2*values.Len()),
	}
	var listed []string
	for i := 0; i < values.Len(); i++ {
		vd := values.Get(i)
		full := string(vd.Name())
		short := strings.ToLower(strings.TrimPrefix(full, prefix))
		if _, dup := en.byNumber[vd.Number()]; !dup {
			en.byNumber[vd.Number()] = short
		}
		en.byName[short] = vd.Number()
		en.byName[strings.ToLower(full)] = vd.Number()
		if vd.Number() != 0 {
			listed = append(listed, short)
		}
	}
	en.list = strings.Join(listed, ", ")
	v, _ := enumCache.LoadOrStore(ed.FullName(), en)
	return v.(*enumNames)
}

// enumPrefix turns an enum type name into its values' prefix:
// SessionStatus -> SESSION_STATUS_.
func enumPrefix(name string) string {
	var sb strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			sb.WriteByte('_')
		}
		sb.WriteRune(r)
	}
	return strings.ToUpper(sb.String()) + "_"
}

// EnumString is the API JSON name of an enum value ("reflect"), or "" for an
// unknown number.
func EnumString(e protoreflect.Enum) string {
	return enumNamesOf(e.Descriptor()).byNumber[e.Number()]
}

// ParseEnum reads an enum value by its API name, case-insensitively, with or
// without the type prefix. ok is false when nothing matches.
func ParseEnum(ed protoreflect.EnumDescriptor, s string) (protoreflect.EnumNumber, bool) {
	n, ok := enumNamesOf(ed).byName[strings.ToLower(strings.TrimSpace(s))]
	return n, ok
}

// EnumValues lists the API names of an enum's values, the zero value left out.
func EnumValues(ed protoreflect.EnumDescriptor) string {
	return enumNamesOf(ed).list
}
