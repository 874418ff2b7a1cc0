package apijson

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
)

// maxDepth bounds nesting so hostile input cannot exhaust the stack. Fields
// with tighter limits (AGENTESE kwargs: 16) are checked by their services,
// which can name the limit.
const maxDepth = 64

// DecodeError is a request body that cannot be read into the request message.
// Its text is safe to show to the caller and names the offending field.
type DecodeError struct {
	Field  string // dotted path of the field, "" for the body as a whole
	Reason string
}

func (e *DecodeError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// Unmarshal decodes API JSON into m, which it resets first. An empty body or
// null leaves m empty. Unknown fields are ignored.
func Unmarshal(data []byte, m proto.Message) error {
	proto.Reset(m)
	d := &decoder{data: data}
	d.ws()
	if d.pos == len(d.data) {
		return nil
	}
	if d.peekLiteral("null") {
		d.pos += 4
	} else {
		if d.data[d.pos] != '{' {
			return &DecodeError{Reason: "request body must be a JSON object"}
		}
		if err := d.message(m.ProtoReflect()); err != nil {
			return err
		}
	}
	d.ws()
	if d.pos != len(d.data) {
		return d.syntaxErr()
	}
	return nil
}

// UnmarshalReader reads r to its end and decodes it; see Unmarshal. An empty
// body is io.EOF, which grpc-gateway treats as an empty request.
func UnmarshalReader(r io.Reader, m proto.Message) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		proto.Reset(m)
		return io.EOF
	}
	return Unmarshal(data, m)
}

type decoder struct {
	data  []byte
	pos   int
	depth int
	path  []string
}

func (d *decoder) fieldPath() string { return strings.Join(d.path, ".") }

func (d *decoder) fieldErr(reason string) error {
	return &DecodeError{Field: d.fieldPath(), Reason: reason}
}

func (d *decoder) syntaxErr() error {
	if d.pos >= len(d.data) {
		return &DecodeError{Reason: "request body is not valid JSON (unexpected end)"}
	}
	return &DecodeError{Reason: fmt.Sprintf("request body is not valid JSON (at byte %d)", d.pos)}
}

func (d *decoder) ws() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *decoder) peek() byte {
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

func (d *decoder) peekLiteral(lit string) bool {
	return len(d.data)-d.pos >= len(lit) && string(d.data[d.pos:d.pos+len(lit)]) == lit
}

func (d *decoder) expect(c byte) error {
	d.ws()
	if d.peek() != c {
		return d.syntaxErr()
	}
	d.pos++
	return nil
}

func (d *decoder) enter() error {
	d.depth++
	if d.depth > maxDepth {
		return &DecodeError{Field: d.fieldPath(), Reason: fmt.Sprintf("nested deeper than %d levels", maxDepth)}
	}
	return nil
}

func (d *decoder) message(m protoreflect.Message) error {
	d.ws()
	if w := wellKnown(m.Descriptor().FullName()); w != notWKT {
		return w.decode(d, m)
	}
	if d.peek() != '{' {
		if d.isValueStart() {
			return d.fieldErr("expected an object")
		}
		return d.syntaxErr()
	}
	d.pos++
	if err := d.enter(); err != nil {
		return err
	}
	fields := m.Descriptor().Fields()
	d.ws()
	if d.peek() == '}' {
		d.pos++
		d.depth--
		return nil
	}
	for {
		d.ws()
		if d.peek() != '"' {
			return d.syntaxErr()
		}
		key, err := d.rawString()
		if err != nil {
			return err
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		fd := fields.ByName(protoreflect.Name(key))
		if fd == nil {
			fd = fields.ByJSONName(key)
		}
		if fd == nil {
			if err := d.skipValue(); err != nil {
				return err
			}
		} else {
			d.path = append(d.path, string(fd.Name()))
			if err := d.field(m, fd); err != nil {
				return err
			}
			d.path = d.path[:len(d.path)-1]
		}
		d.ws()
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			d.depth--
			return nil
		default:
			return d.syntaxErr()
		}
	}
}

func (d *decoder) field(m protoreflect.Message, fd protoreflect.FieldDescriptor) error {
	d.ws()
	if d.peekLiteral("null") {
		if md := fd.Message(); md != nil && md.FullName() == "google.protobuf.Value" && !fd.IsList() && !fd.IsMap() {
			d.pos += 4
			m.Set(fd, protoreflect.ValueOfMessage(structpb.NewNullValue().ProtoReflect()))
			return nil
		}
		d.pos += 4
		m.Clear(fd)
		return nil
	}
	switch {
	case fd.IsList():
		return d.list(m, fd)
	case fd.IsMap():
		return d.mapField(m, fd)
	case fd.Message() != nil:
		return d.message(m.Mutable(fd).Message())
	default:
		v, err := d.scalar(fd)
		if err != nil {
			return err
		}
		m.Set(fd, v)
		return nil
	}
}

func (d *decoder) list(m protoreflect.Message, fd protoreflect.FieldDescriptor) error {
	if d.peek() != '[' {
		if d.isValueStart() {
			return d.fieldErr("expected an array")
		}
		return d.syntaxErr()
	}
	d.pos++
	if err := d.enter(); err != nil {
		return err
	}
	l := m.Mutable(fd).List()
	d.ws()
	if d.peek() == ']' {
		d.pos++
		d.depth--
		return nil
	}
	for i := 0; ; i++ {
		d.path = append(d.path, "["+strconv.Itoa(i)+"]")
		d.ws()
		if fd.Message() != nil {
			e := l.NewElement()
			if err := d.message(e.Message()); err != nil {
				return err
			}
			l.Append(e)
		} else {
			v, err := d.scalar(fd)
			if err != nil {
				return err
			}
			l.Append(v)
		}
		d.path = d.path[:len(d.path)-1]
		d.ws()
		switch d.peek() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			d.depth--
			return nil
		default:
			return d.syntaxErr()
		}
	}
}

func (d *decoder) mapField(m protoreflect.Message, fd protoreflect.FieldDescriptor) error {
	if d.peek() != '{' {
		if d.isValueStart() {
			return d.fieldErr("expected an object")
		}
		return d.syntaxErr()
	}
	d.pos++
	if err := d.enter(); err != nil {
		return err
	}
	mp := m.Mutable(fd).Map()
	kd, vd := fd.MapKey(), fd.MapValue()
	d.ws()
	if d.peek() == '}' {
		d.pos++
		d.depth--
		return nil
	}
	for {
		d.ws()
		if d.peek() != '"' {
			return d.syntaxErr()
		}
		ks, err := d.rawString()
		if err != nil {
			return err
		}
		key, err := parseMapKey(kd, ks)
		if err != nil {
			return d.fieldErr(fmt.Sprintf("invalid map key %q", ks))
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		d.ws()
		d.path = append(d.path, ks)
		if vd.Message() != nil {
			val := mp.NewValue()
			if err := d.message(val.Message()); err != nil {
				return err
			}
			mp.Set(key, val)
		} else {
			v, err := d.scalar(vd)
			if err != nil {
				return err
			}
			mp.Set(key, v)
		}
		d.path = d.path[:len(d.path)-1]
		d.ws()
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			d.depth--
			return nil
		default:
			return d.syntaxErr()
		}
	}
}

func parseMapKey(kd protoreflect.FieldDescriptor, s string) (protoreflect.MapKey, error) {
	switch kd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(s).MapKey(), nil
	case protoreflect.BoolKind:
		b, err := strconv.ParseBool(s)
		return protoreflect.ValueOfBool(b).MapKey(), err
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		n, err := strconv.ParseInt(s, 10, 32)
		return protoreflect.ValueOfInt32(int32(n)).MapKey(), err
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		n, err := strconv.ParseInt(s, 10, 64)
		return protoreflect.ValueOfInt64(n).MapKey(), err
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		n, err := strconv.ParseUint(s, 10, 32)
		return protoreflect.ValueOfUint32(uint32(n)).MapKey(), err
	default:
		n, err := strconv.ParseUint(s, 10, 64)
		return protoreflect.ValueOfUint64(n).MapKey(), err
	}
}

// scalar reads one non-message value for fd.
func (d *decoder) scalar(fd protoreflect.FieldDescriptor) (protoreflect.Value, error) {
	d.ws()
	switch fd.Kind() {
	case protoreflect.BoolKind:
		switch {
		case d.peekLiteral("true"):
			d.pos += 4
			return protoreflect.ValueOfBool(true), nil
		case d.peekLiteral("false"):
			d.pos += 5
			return protoreflect.ValueOfBool(false), nil
		}
		return protoreflect.Value{}, d.typeErr("expected true or false")
	case protoreflect.StringKind:
		if d.peek() != '"' {
			return protoreflect.Value{}, d.typeErr("expected a string")
		}
		s, err := d.rawString()
		if err != nil {
			return protoreflect.Value{}, err
		}
		return protoreflect.ValueOfString(s), nil
	case protoreflect.BytesKind:
		if d.peek() != '"' {
			return protoreflect.Value{}, d.typeErr("expected a base64 string")
		}
		s, err := d.rawString()
		if err != nil {
			return protoreflect.Value{}, err
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			if b, err = base64.URLEncoding.DecodeString(s); err != nil {
				return protoreflect.Value{}, d.fieldErr("expected a base64 string")
			}
		}
		return protoreflect.ValueOfBytes(b), nil
	case protoreflect.EnumKind:
		return d.enum(fd)
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		f, err := d.floatToken()
		if err != nil {
			return protoreflect.Value{}, err
		}
		if fd.Kind() == protoreflect.FloatKind {
			if !math.IsInf(f, 0) && !math.IsNaN(f) && math.Abs(f) > math.MaxFloat32 {
				return protoreflect.Value{}, d.fieldErr("number out of range")
			}
			return protoreflect.ValueOfFloat32(float32(f)), nil
		}
		return protoreflect.ValueOfFloat64(f), nil
	default:
		return d.integer(fd)
	}
}

// typeErr reports a value of the wrong type, or a syntax error when what
// follows is not a JSON value at all.
func (d *decoder) typeErr(want string) error {
	if d.isValueStart() {
		return d.fieldErr(want)
	}
	return d.syntaxErr()
}

func (d *decoder) isValueStart() bool {
	switch c := d.peek(); {
	case c == '"' || c == '{' || c == '[' || c == '-' || (c >= '0' && c <= '9'):
		return true
	case d.peekLiteral("true") || d.peekLiteral("false") || d.peekLiteral("null"):
		return true
	}
	return false
}

func (d *decoder) enum(fd protoreflect.FieldDescriptor) (protoreflect.Value, error) {
	ed := fd.Enum()
	switch c := d.peek(); {
	case c == '"':
		s, err := d.rawString()
		if err != nil {
			return protoreflect.Value{}, err
		}
		if n, ok := ParseEnum(ed, s); ok {
			return protoreflect.ValueOfEnum(n), nil
		}
		name := string(fd.Name())
		return protoreflect.Value{}, &DecodeError{
			Field:  d.fieldPath(),
			Reason: fmt.Sprintf("Invalid %s '%s'. Valid %ss: %s", name, truncate(s, 64), name, EnumValues(ed)),
		}
	case c == '-' || (c >= '0' && c <= '9'):
		tok, err := d.numberToken()
		if err != nil {
			return protoreflect.Value{}, err
		}
		n, err := strconv.ParseInt(tok, 10, 32)
		if err != nil {
			return protoreflect.Value{}, d.fieldErr("expected one of: " + EnumValues(ed))
		}
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber(n)), nil
	}
	return protoreflect.Value{}, d.typeErr("expected one of: " + EnumValues(ed))
}

func (d *decoder) integer(fd protoreflect.FieldDescriptor) (protoreflect.Value, error) {
	var tok string
	switch c := d.peek(); {
	case c == '"':
		// protojson accepts quoted integers (int64 over JSON); so do we.
		s, err := d.rawString()
		if err != nil {
			return protoreflect.Value{}, err
		}
		tok = strings.TrimSpace(s)
	case c == '-' || (c >= '0' && c <= '9'):
		var err error
		if tok, err = d.numberToken(); err != nil {
			return protoreflect.Value{}, err
		}
	default:
		return protoreflect.Value{}, d.typeErr("expected an integer")
	}
	bits := 64
	switch fd.Kind() {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		bits = 32
	}
	unsigned := fd.Kind() == protoreflect.Uint32Kind || fd.Kind() == protoreflect.Fixed32Kind ||
		fd.Kind() == protoreflect.Uint64Kind || fd.Kind() == protoreflect.Fixed64Kind
	if unsigned {
		n, err := strconv.ParseUint(tok, 10, bits)
		if err != nil {
			f, ferr := strconv.ParseFloat(tok, 64)
			if ferr != nil || f != math.Trunc(f) || f < 0 || f > math.Pow(2, float64(bits))-1 {
				return protoreflect.Value{}, d.fieldErr("expected a non-negative integer")
			}
			n = uint64(f)
		}
		if bits == 32 {
			return protoreflect.ValueOfUint32(uint32(n)), nil
		}
		return protoreflect.ValueOfUint64(n), nil
	}
	n, err := strconv.ParseInt(tok, 10, bits)
	if err != nil {
		f, ferr := strconv.ParseFloat(tok, 64)
		limit := math.Pow(2, float64(bits-1))
		if ferr != nil || f != math.Trunc(f) || f < -limit || f >= limit {
			if ferr == nil && f == math.Trunc(f) {
				return protoreflect.Value{}, d.fieldErr("integer out of range")
			}
			return protoreflect.Value{}, d.fieldErr("expected an integer")
		}
		n = int64(f)
	}
	if bits == 32 {
		return protoreflect.ValueOfInt32(int32(n)), nil
	}
	return protoreflect.ValueOfInt64(n), nil
}

func (d *decoder) floatToken() (float64, error) {
	switch c := d.peek(); {
	case c == '"':
		s, err := d.rawString()
		if err != nil {
			return 0, err
		}
		switch s {
		case "NaN":
			return math.NaN(), nil
		case "Infinity":
			return math.Inf(1), nil
		case "-Infinity":
			return math.Inf(-1), nil
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return 0, d.fieldErr("expected a number")
		}
		return f, nil
	case c == '-' || (c >= '0' && c <= '9'):
		tok, err := d.numberToken()
		if err != nil {
			return 0, err
		}
		f, err := strconv.ParseFloat(tok, 64)
		if err != nil {
			return 0, d.fieldErr("number out of range")
		}
		return f, nil
	}
	return 0, d.typeErr("expected a number")
}

// numberToken scans a JSON number and returns its text.
func (d *decoder) numberToken() (string, error) {
	start := d.pos
	if d.peek() == '-' {
		d.pos++
	}
	switch c := d.peek(); {
	case c == '0':
		d.pos++
	case c >= '1' && c <= '9':
		for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
			d.pos++
		}
	default:
		return "", d.syntaxErr()
	}
	if d.peek() == '.' {
		d.pos++
		if c := d.peek(); c < '0' || c > '9' {
			return "", d.syntaxErr()
		}
		for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
			d.pos++
		}
	}
	if c := d.peek(); c == 'e' || c == 'E' {
		d.pos++
		if c := d.peek(); c == '+' || c == '-' {
			d.pos++
		}
		if c := d.peek(); c < '0' || c > '9' {
			return "", d.syntaxErr()
		}
		for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
			d.pos++
		}
	}
	return string(d.data[start:d.pos]), nil
}

// stringValue reads a string where the field's type demands one.
func (d *decoder) stringValue() (string, error) {
	d.ws()
	if d.peek() != '"' {
		return "", d.typeErr("expected a string")
	}
	return d.rawString()
}

// rawString reads a JSON string starting at the opening quote. Invalid UTF-8
// becomes U+FFFD (proto strings must be valid UTF-8).
func (d *decoder) rawString() (string, error) {
	d.pos++ // opening quote
	start := d.pos
	// Fast path: no escapes, all ASCII or valid UTF-8.
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		if c == '"' {
			raw := d.data[start:d.pos]
			d.pos++
			if utf8.Valid(raw) {
				return string(raw), nil
			}
			return strings.ToValidUTF8(string(raw), "\uFFFD"), nil
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return "", d.syntaxErr()
		}
		d.pos++
	}
	if d.pos >= len(d.data) {
		return "", d.syntaxErr()
	}
	// Slow path with escapes.
	var sb strings.Builder
	sb.Write(d.data[start:d.pos])
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		switch {
		case c == '"':
			d.pos++
			s := sb.String()
			if !utf8.ValidString(s) {
				s = strings.ToValidUTF8(s, "\uFFFD")
			}
			return s, nil
		case c < 0x20:
			return "", d.syntaxErr()
		case c != '\\':
			sb.WriteByte(c)
			d.pos++
			continue
		}
		d.pos++
		if d.pos >= len(d.data) {
			return "", d.syntaxErr()
		}
		e := d.data[d.pos]
		d.pos++
		switch e {
		case '"', '\\', '/':
			sb.WriteByte(e)
		case 'b':
			sb.WriteByte('\b')
		case 'f':
			sb.WriteByte('\f')
		case 'n':
			sb.WriteByte('\n')
		case 'r':
			sb.WriteByte('\r')
		case 't':
			sb.WriteByte('\t')
		case 'u':
			r, ok := d.hex4()
			if !ok {
				return "", d.syntaxErr()
			}
			if utf16.IsSurrogate(r) {
				r2 := rune(utf8.RuneError)
				if d.peekLiteral(`\u`) {
					save := d.pos
					d.pos += 2
					if lo, ok := d.hex4(); ok {
						if dec := utf16.DecodeRune(r, lo); dec != utf8.RuneError {
							r2 = dec
						} else {
							d.pos = save
						}
					} else {
						d.pos = save
					}
				}
				r = r2
			}
			sb.WriteRune(r)
		default:
			return "", d.syntaxErr()
		}
	}
	return "", d.syntaxErr()
}

func (d *decoder) hex4() (rune, bool) {
	if len(d.data)-d.pos < 4 {
		return 0, false
	}
	var r rune
	for _, c := range d.data[d.pos : d.pos+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	d.pos += 4
	return r, true
}

// skipValue checks and passes over any JSON value (an unknown field's).
func (d *decoder) skipValue() error {
	d.ws()
	switch c := d.peek(); {
	case c == '"':
		_, err := d.rawString()
		return err
	case c == '{':
		return d.skipObject()
	case c == '[':
		d.pos++
		if err := d.enter(); err != nil {
			return err
		}
		d.ws()
		if d.peek() == ']' {
			d.pos++
			d.depth--
			return nil
		}
		for {
			if err := d.skipValue(); err != nil {
				return err
			}
			d.ws()
			switch d.peek() {
			case ',':
				d.pos++
			case ']':
				d.pos++
				d.depth--
				return nil
			default:
				return d.syntaxErr()
			}
		}
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := d.numberToken()
		return err
	case d.peekLiteral("true"):
		d.pos += 4
	case d.peekLiteral("false"):
		d.pos += 5
	case d.peekLiteral("null"):
		d.pos += 4
	default:
		return d.syntaxErr()
	}
	return nil
}

func (d *decoder) skipObject() error {
	d.ws()
	if d.peek() != '{' {
		return d.typeErr("expected an object")
	}
	d.pos++
	if err := d.enter(); err != nil {
		return err
	}
	d.ws()
	if d.peek() == '}' {
		d.pos++
		d.depth--
		return nil
	}
	for {
		d.ws()
		if d.peek() != '"' {
			return d.syntaxErr()
		}
		if _, err := d.rawString(); err != nil {
			return err
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		if err := d.skipValue(); err != nil {
			return err
		}
		d.ws()
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			d.depth--
			return nil
		default:
			return d.syntaxErr()
		}
	}
}

// jsonValue reads any JSON value as a google.protobuf.Value.
func (d *decoder) jsonValue() (*structpb.Value, error) {
	d.ws()
	switch c := d.peek(); {
	case c == '"':
		s, err := d.rawString()
		if err != nil {
			return nil, err
		}
		return structpb.NewStringValue(s), nil
	case c == '{':
		d.pos++
		if err := d.enter(); err != nil {
			return nil, err
		}
		fields := map[string]*structpb.Value{}
		d.ws()
		if d.peek() == '}' {
			d.pos++
			d.depth--
			return structpb.NewStructValue(&structpb.Struct{Fields: fields}), nil
		}
		for {
			d.ws()
			if d.peek() != '"' {
				return nil, d.syntaxErr()
			}
			k, err := d.rawString()
			if err != nil {
				return nil, err
			}
			if err := d.expect(':'); err != nil {
				return nil, err
			}
			v, err := d.jsonValue()
			if err != nil {
				return nil, err
			}
			fields[k] = v
			d.ws()
			switch d.peek() {
			case ',':
				d.pos++
			case '}':
				d.pos++
				d.depth--
				return structpb.NewStructValue(&structpb.Struct{Fields: fields}), nil
			default:
				return nil, d.syntaxErr()
			}
		}
	case c == '[':
		d.pos++
		if err := d.enter(); err != nil {
			return nil, err
		}
		var values []*structpb.Value
		d.ws()
		if d.peek() == ']' {
			d.pos++
			d.depth--
			return structpb.NewListValue(&structpb.ListValue{}), nil
		}
		for {
			v, err := d.jsonValue()
			if err != nil {
				return nil, err
			}
			values = append(values, v)
			d.ws()
			switch d.peek() {
			case ',':
				d.pos++
			case ']':
				d.pos++
				d.depth--
				return structpb.NewListValue(&structpb.ListValue{Values: values}), nil
			default:
				return nil, d.syntaxErr()
			}
		}
	case c == '-' || (c >= '0' && c <= '9'):
		tok, err := d.numberToken()
		if err != nil {
			return nil, err
		}
		f, err := strconv.ParseFloat(tok, 64)
		if err != nil {
			return nil, d.fieldErr("number out of range")
		}
		return structpb.NewNumberValue(f), nil
	case d.peekLiteral("true"):
		d.pos += 4
		return structpb.NewBoolValue(true), nil
	case d.peekLiteral("false"):
		d.pos += 5
		return structpb.NewBoolValue(false), nil
	case d.peekLiteral("null"):
		d.pos += 4
		return structpb.NewNullValue(), nil
	}
	return nil, d.syntaxErr()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// IsDecodeError reports whether err (or an error it wraps) is a DecodeError.
func IsDecodeError(err error) bool {
	var de *DecodeError
	return errors.As(err, &de)
}
