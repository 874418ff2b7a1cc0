package apijson

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
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

// IsDecodeError reports whether err (or an error it wraps) is a DecodeError.
func IsDecodeError(err error) bool {
	var de *DecodeError
	return errors.As(err, &de)
}

// Unmarshal decodes API JSON into m, which it resets first. An empty body or
// null leaves m empty.
func Unmarshal(data []byte, m proto.Message) error {
	return UnmarshalOptions{}.Unmarshal(data, m)
}

// UnmarshalReader decodes the JSON read from r; see Unmarshal. An empty body
// is io.EOF, which grpc-gateway treats as an empty request.
func UnmarshalReader(r io.Reader, m proto.Message) error {
	return UnmarshalOptions{}.UnmarshalReader(r, m)
}

// UnmarshalOptions are rules of one request's body beyond its message type.
type UnmarshalOptions struct {
	// Required names top-level fields the body must contain with a value
	// other than null. Proto3 cannot tell a string left out from an empty
	// one, so presence is checked here, on the JSON: a body without one
	// (an empty body too) fails with a DecodeError naming it.
	Required []protoreflect.Name
}

// Unmarshal is Unmarshal with the options.
func (o UnmarshalOptions) Unmarshal(data []byte, m proto.Message) error {
	d := getDecoder()
	defer putDecoder(d)
	d.in = *bytes.NewBuffer(data) // the tokenizer reads a bytes.Buffer in place
	err := o.decode(d, &d.in, m)
	if errors.Is(err, io.EOF) {
		return nil // an empty body is an empty message
	}
	return err
}

// UnmarshalReader is UnmarshalReader with the options. An empty body is
// io.EOF only when nothing is required.
func (o UnmarshalOptions) UnmarshalReader(r io.Reader, m proto.Message) error {
	d := getDecoder()
	defer putDecoder(d)
	return o.decode(d, r, m)
}

func (o UnmarshalOptions) decode(d *decoder, r io.Reader, m proto.Message) error {
	proto.Reset(m)
	d.dec.Reset(r, decodeOptions...)
	d.track = len(o.Required) > 0
	switch d.dec.PeekKind() {
	case jsontext.KindBeginObject:
		if err := d.message(m.ProtoReflect()); err != nil {
			return err
		}
	case jsontext.KindNull:
		if err := d.read(); err != nil {
			return err
		}
	case jsontext.KindInvalid:
		_, err := d.dec.ReadToken()
		switch {
		case errors.Is(err, io.EOF): // an empty body
			if err := o.missing(d); err != nil {
				return err
			}
			return io.EOF
		case !IsDecodeError(d.syntaxErr(err)):
			return err // the reader's
		}
		fallthrough
	default:
		return &DecodeError{Reason: "request body must be a JSON object"}
	}
	// Nothing may follow the body's value.
	if _, err := d.dec.ReadToken(); !errors.Is(err, io.EOF) {
		if err == nil {
			return &DecodeError{Reason: fmt.Sprintf("request body is not valid JSON: more than one value (at byte %d)", d.dec.InputOffset())}
		}
		return d.syntaxErr(err)
	}
	return o.missing(d)
}

// missing names the first required field the body did not give.
func (o UnmarshalOptions) missing(d *decoder) error {
	for _, name := range o.Required {
		if !slices.Contains(d.given, name) {
			return &DecodeError{Field: string(name), Reason: "required field missing"}
		}
	}
	return nil
}

// decodeOptions: invalid UTF-8 and unpaired surrogates in strings become
// U+FFFD, as Python's decoder leaves them readable; duplicate names are
// refused by field (see message), which also catches a field given by both
// its names.
var decodeOptions = []jsontext.Options{jsontext.AllowInvalidUTF8(true), jsontext.AllowDuplicateNames(true)}

// decoder binds the tokens of one body to a message with protoreflect.
type decoder struct {
	dec  jsontext.Decoder
	in   bytes.Buffer
	path []pathElem // for errors: the field being read
	// With track set, given collects the top-level fields with a value
	// other than null.
	track bool
	given []protoreflect.Name
}

// pathElem is a field name or map key, or a list index when name is "".
type pathElem struct {
	name  string
	index int
}

var decoderPool = sync.Pool{New: func() any { return new(decoder) }}

func getDecoder() *decoder { return decoderPool.Get().(*decoder) }

func putDecoder(d *decoder) {
	big := d.dec.InputOffset() > 64<<10
	d.in = bytes.Buffer{}
	d.dec.Reset(&d.in) // drop the reader
	if big {
		d.dec.Reset(&d.in) // and a large read buffer
	}
	d.path, d.given = d.path[:0], d.given[:0]
	decoderPool.Put(d)
}

func (d *decoder) fieldErr(reason string) error {
	var b strings.Builder
	for _, p := range d.path {
		switch {
		case p.name == "":
			fmt.Fprintf(&b, "[%d]", p.index)
		case b.Len() > 0:
			b.WriteString("." + p.name)
		default:
			b.WriteString(p.name)
		}
	}
	return &DecodeError{Field: b.String(), Reason: reason}
}

// syntaxErr turns the tokenizer's error into the caller's. Errors of the
// reader (a body over its size limit) pass through unchanged.
func (d *decoder) syntaxErr(err error) error {
	var se *jsontext.SyntacticError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &DecodeError{Reason: "request body is not valid JSON (unexpected end)"}
	case errors.As(err, &se):
		return &DecodeError{Reason: fmt.Sprintf("request body is not valid JSON: %v (at byte %d)", se.Err, se.ByteOffset)}
	}
	return err
}

// read consumes one token, for its syntax only.
func (d *decoder) read() error {
	if _, err := d.dec.ReadToken(); err != nil {
		return d.syntaxErr(err)
	}
	return nil
}

// typeErr reports a value of the wrong type, or the syntax error when what
// follows is not JSON.
func (d *decoder) typeErr(want string) error {
	if _, err := d.dec.ReadValue(); err != nil {
		return d.syntaxErr(err)
	}
	return d.fieldErr(want)
}

// open reads the '{' or '[' of a value of that kind, within maxDepth.
func (d *decoder) open(kind jsontext.Kind, want string) error {
	if d.dec.PeekKind() != kind {
		return d.typeErr(want)
	}
	if err := d.read(); err != nil {
		return err
	}
	if d.dec.StackDepth() > maxDepth {
		return d.fieldErr(fmt.Sprintf("nested deeper than %d levels", maxDepth))
	}
	return nil
}

// more reports whether the object or array being read has another member,
// and consumes its end when not.
func (d *decoder) more() (bool, error) {
	switch d.dec.PeekKind() {
	case jsontext.KindEndObject, jsontext.KindEndArray, jsontext.KindInvalid: // an end, or the syntax error
		return false, d.read()
	}
	return true, nil
}

// name reads an object member's name.
func (d *decoder) name() (string, error) {
	tok, err := d.dec.ReadToken()
	if err != nil {
		return "", d.syntaxErr(err)
	}
	return tok.String(), nil
}

func (d *decoder) message(m protoreflect.Message) error {
	md := m.Descriptor()
	if w := wellKnown(md.FullName()); w != notWKT {
		return d.wellKnown(w, m)
	}
	if err := d.open(jsontext.KindBeginObject, "expected an object"); err != nil {
		return err
	}
	fields := fieldsOf(md)
	top := d.track && d.dec.StackDepth() == 1
	// As protojson: a field (by either name) or a oneof at most once.
	var seen, seenOneofs bitset
	for {
		if ok, err := d.more(); !ok {
			return err
		}
		tok, err := d.dec.ReadToken()
		if err != nil {
			return d.syntaxErr(err)
		}
		fd := fields[tok.String()] // inlined: no copy of the name
		if fd == nil {
			if err := d.skip(); err != nil {
				return err
			}
			continue
		}
		d.path = append(d.path, pathElem{name: string(fd.Name())})
		if seen.add(int(fd.Number())) {
			return d.fieldErr("field given more than once")
		}
		null := d.dec.PeekKind() == jsontext.KindNull
		if null && !isValue(fd) {
			if err := d.read(); err != nil {
				return err
			}
			d.path = d.path[:len(d.path)-1]
			continue // null is unset
		}
		if top && !null {
			d.given = append(d.given, fd.Name())
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && seenOneofs.add(od.Index()) {
			return d.fieldErr(fmt.Sprintf("only one of %s may be given", oneofMembers(od)))
		}
		if err := d.field(m, fd); err != nil {
			return err
		}
		d.path = d.path[:len(d.path)-1]
	}
}

// isValue: a google.protobuf.Value field, where null is a value.
func isValue(fd protoreflect.FieldDescriptor) bool {
	return fd.Message() != nil && fd.Message().FullName() == "google.protobuf.Value" && !fd.IsList() && !fd.IsMap()
}

func oneofMembers(od protoreflect.OneofDescriptor) string {
	names := make([]string, od.Fields().Len())
	for i := range names {
		names[i] = string(od.Fields().Get(i).Name())
	}
	return strings.Join(names, ", ")
}

func (d *decoder) field(m protoreflect.Message, fd protoreflect.FieldDescriptor) error {
	switch {
	case fd.IsList():
		if err := d.open(jsontext.KindBeginArray, "expected an array"); err != nil {
			return err
		}
		l := m.Mutable(fd).List()
		for i := 0; ; i++ {
			if ok, err := d.more(); !ok {
				return err
			}
			d.path = append(d.path, pathElem{index: i})
			v, err := d.value(l.NewElement(), fd)
			if err != nil {
				return err
			}
			l.Append(v)
			d.path = d.path[:len(d.path)-1]
		}
	case fd.IsMap():
		if err := d.open(jsontext.KindBeginObject, "expected an object"); err != nil {
			return err
		}
		mp := m.Mutable(fd).Map()
		for {
			if ok, err := d.more(); !ok {
				return err
			}
			name, err := d.name()
			if err != nil {
				return err
			}
			key, err := parseMapKey(fd.MapKey(), name)
			if err != nil {
				return d.fieldErr(fmt.Sprintf("invalid map key %q", name))
			}
			if mp.Has(key) {
				return d.fieldErr(fmt.Sprintf("map key %q given more than once", name))
			}
			d.path = append(d.path, pathElem{name: key.String()})
			v, err := d.value(mp.NewValue(), fd.MapValue())
			if err != nil {
				return err
			}
			mp.Set(key, v)
			d.path = d.path[:len(d.path)-1]
		}
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

// value reads one list element or map value into v (a new one, for a
// message) or as a scalar.
func (d *decoder) value(v protoreflect.Value, fd protoreflect.FieldDescriptor) (protoreflect.Value, error) {
	if fd.Message() != nil {
		return v, d.message(v.Message())
	}
	return d.scalar(fd)
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

// str reads a string where the field's type demands one.
func (d *decoder) str(want string) (string, error) {
	if d.dec.PeekKind() != jsontext.KindString {
		return "", d.typeErr(want)
	}
	tok, err := d.dec.ReadToken()
	if err != nil {
		return "", d.syntaxErr(err)
	}
	return tok.String(), nil
}

// scalar reads one non-message value for fd.
func (d *decoder) scalar(fd protoreflect.FieldDescriptor) (protoreflect.Value, error) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		switch d.dec.PeekKind() {
		case jsontext.KindTrue, jsontext.KindFalse:
			tok, err := d.dec.ReadToken()
			if err != nil {
				return protoreflect.Value{}, d.syntaxErr(err)
			}
			return protoreflect.ValueOfBool(tok.Bool()), nil
		}
		return protoreflect.Value{}, d.typeErr("expected true or false")
	case protoreflect.StringKind:
		s, err := d.str("expected a string")
		return protoreflect.ValueOfString(s), err
	case protoreflect.BytesKind:
		s, err := d.str("expected a base64 string")
		if err != nil {
			return protoreflect.Value{}, err
		}
		// As protojson: standard or URL alphabet, padded or not.
		enc := base64.StdEncoding
		if strings.ContainsAny(s, "-_") {
			enc = base64.URLEncoding
		}
		if len(s)%4 != 0 {
			enc = enc.WithPadding(base64.NoPadding)
		}
		b, err := enc.DecodeString(s)
		if err != nil {
			return protoreflect.Value{}, d.fieldErr("expected a base64 string")
		}
		return protoreflect.ValueOfBytes(b), nil
	case protoreflect.EnumKind:
		return d.enum(fd)
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return d.float(fd)
	default:
		return d.integer(fd)
	}
}

func (d *decoder) enum(fd protoreflect.FieldDescriptor) (protoreflect.Value, error) {
	ed := fd.Enum()
	switch d.dec.PeekKind() {
	case jsontext.KindString:
		s, err := d.str("")
		if err != nil {
			return protoreflect.Value{}, err
		}
		if n, ok := ParseEnum(ed, s); ok {
			return protoreflect.ValueOfEnum(n), nil
		}
		name := string(fd.Name())
		return protoreflect.Value{}, d.fieldErr(fmt.Sprintf("Invalid %s '%s'. Valid %ss: %s", name, truncate(s, 64), name, EnumValues(ed)))
	case jsontext.KindNumber:
		raw, err := d.dec.ReadValue()
		if err != nil {
			return protoreflect.Value{}, d.syntaxErr(err)
		}
		n, err := strconv.ParseInt(string(raw), 10, 32)
		if err != nil {
			return protoreflect.Value{}, d.fieldErr("expected one of: " + EnumValues(ed))
		}
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber(n)), nil
	}
	return protoreflect.Value{}, d.typeErr("expected one of: " + EnumValues(ed))
}

// number reads a JSON number, or a string holding exactly one (protojson
// writes 64-bit integers so), and returns its text.
func (d *decoder) number(want string) (string, error) {
	switch d.dec.PeekKind() {
	case jsontext.KindNumber:
		raw, err := d.dec.ReadValue()
		if err != nil {
			return "", d.syntaxErr(err)
		}
		return string(raw), nil
	case jsontext.KindString:
		s, err := d.str(want)
		if err != nil {
			return "", err
		}
		if !isNumber(s) {
			return s, d.fieldErr(want)
		}
		return s, nil
	}
	return "", d.typeErr(want)
}

// isNumber reports whether s is exactly one JSON number.
func isNumber(s string) bool {
	digit := func(c byte) bool { return c >= '0' && c <= '9' }
	return s != "" && (s[0] == '-' || digit(s[0])) && digit(s[len(s)-1]) && jsontext.Value(s).IsValid()
}

func (d *decoder) float(fd protoreflect.FieldDescriptor) (protoreflect.Value, error) {
	bits := 64
	if fd.Kind() == protoreflect.FloatKind {
		bits = 32
	}
	s, err := d.number("expected a number")
	var f float64
	switch {
	case err == nil:
		if f, err = strconv.ParseFloat(s, bits); err != nil {
			return protoreflect.Value{}, d.fieldErr("number out of range")
		}
	case s == "NaN":
		f = math.NaN()
	case s == "Infinity":
		f = math.Inf(1)
	case s == "-Infinity":
		f = math.Inf(-1)
	default:
		return protoreflect.Value{}, err
	}
	if bits == 32 {
		return protoreflect.ValueOfFloat32(float32(f)), nil
	}
	return protoreflect.ValueOfFloat64(f), nil
}

func (d *decoder) integer(fd protoreflect.FieldDescriptor) (protoreflect.Value, error) {
	s, err := d.number("expected an integer")
	if err != nil {
		return protoreflect.Value{}, err
	}
	digits, ok := integerDigits(s)
	if !ok {
		return protoreflect.Value{}, d.fieldErr("expected an integer")
	}
	var v protoreflect.Value
	switch fd.Kind() {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		var n int64
		n, err = strconv.ParseInt(digits, 10, 32)
		v = protoreflect.ValueOfInt32(int32(n))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		var n uint64
		n, err = strconv.ParseUint(digits, 10, 32)
		v = protoreflect.ValueOfUint32(uint32(n))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		var n uint64
		n, err = strconv.ParseUint(digits, 10, 64)
		v = protoreflect.ValueOfUint64(n)
	default:
		var n int64
		n, err = strconv.ParseInt(digits, 10, 64)
		v = protoreflect.ValueOfInt64(n)
	}
	if err != nil {
		return protoreflect.Value{}, d.fieldErr("integer out of range")
	}
	return v, nil
}

// integerDigits writes a JSON number that is an integer in any form (12,
// 12.0, 1.2e1, 120e-1) as plain digits, exactly; ok is false for a number
// with a fraction.
func integerDigits(s string) (string, bool) {
	if s == "-0" {
		return "0", true // even unsigned
	}
	if !strings.ContainsAny(s, ".eE") {
		return s, true
	}
	sign := ""
	if s[0] == '-' {
		sign, s = "-", s[1:]
	}
	exp := 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(s[i+1:])
		if err != nil {
			return "", false
		}
		s, exp = s[:i], e
	}
	whole, frac, _ := strings.Cut(s, ".")
	digits := strings.TrimLeft(whole+frac, "0")
	exp -= len(frac)
	for ; exp < 0 && digits != ""; exp++ {
		if digits[len(digits)-1] != '0' {
			return "", false
		}
		digits = digits[:len(digits)-1]
	}
	switch {
	case digits == "":
		return "0", true
	case len(digits)+exp > 20: // more digits than any 64-bit integer
		return sign + "1" + strings.Repeat("0", 20), true
	}
	return sign + digits + strings.Repeat("0", exp), true
}

// skip passes over an unknown field's value, within maxDepth.
func (d *decoder) skip() error {
	start := d.dec.StackDepth()
	for {
		tok, err := d.dec.ReadToken()
		if err != nil {
			return d.syntaxErr(err)
		}
		if k := tok.Kind(); (k == '{' || k == '[') && d.dec.StackDepth() > maxDepth {
			return d.fieldErr(fmt.Sprintf("nested deeper than %d levels", maxDepth))
		}
		if d.dec.StackDepth() == start {
			return nil
		}
	}
}

// jsonValue reads any JSON value as a google.protobuf.Value.
func (d *decoder) jsonValue() (*structpb.Value, error) {
	switch d.dec.PeekKind() {
	case jsontext.KindBeginObject:
		s, err := d.jsonObject()
		return structpb.NewStructValue(s), err
	case jsontext.KindBeginArray:
		if err := d.open(jsontext.KindBeginArray, ""); err != nil {
			return nil, err
		}
		l := &structpb.ListValue{}
		for {
			if ok, err := d.more(); !ok {
				return structpb.NewListValue(l), err
			}
			v, err := d.jsonValue()
			if err != nil {
				return nil, err
			}
			l.Values = append(l.Values, v)
		}
	case jsontext.KindString:
		s, err := d.str("")
		return structpb.NewStringValue(s), err
	case jsontext.KindNumber:
		s, err := d.number("")
		if err != nil {
			return nil, err
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, d.fieldErr("number out of range")
		}
		return structpb.NewNumberValue(f), nil
	}
	tok, err := d.dec.ReadToken()
	switch {
	case err != nil:
		return nil, d.syntaxErr(err)
	case tok.Kind() == jsontext.KindNull:
		return structpb.NewNullValue(), nil
	case tok.Kind() == jsontext.KindTrue, tok.Kind() == jsontext.KindFalse:
		return structpb.NewBoolValue(tok.Bool()), nil
	}
	return nil, &DecodeError{Reason: fmt.Sprintf("request body is not valid JSON: unexpected %v (at byte %d)", tok.Kind(), d.dec.InputOffset())}
}

// jsonObject reads a JSON object as a google.protobuf.Struct.
func (d *decoder) jsonObject() (*structpb.Struct, error) {
	if err := d.open(jsontext.KindBeginObject, "expected an object"); err != nil {
		return nil, err
	}
	s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for {
		if ok, err := d.more(); !ok {
			return s, err
		}
		name, err := d.name()
		if err != nil {
			return nil, err
		}
		if _, dup := s.Fields[name]; dup {
			return nil, d.fieldErr(fmt.Sprintf("key %q given more than once", name))
		}
		v, err := d.jsonValue()
		if err != nil {
			return nil, err
		}
		s.Fields[name] = v
	}
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

// bitset is a set of small non-negative integers (field numbers, oneof
// indexes), allocation-free below 64.
type bitset struct {
	low  uint64
	high []int
}

// add puts n in the set and reports whether it was there already.
func (s *bitset) add(n int) bool {
	if n >= 0 && n < 64 {
		had := s.low&(1<<n) != 0
		s.low |= 1 << n
		return had
	}
	if slices.Contains(s.high, n) {
		return true
	}
	s.high = append(s.high, n)
	return false
}

// fieldsOf maps a message's field names, proto and JSON, to its fields.
func fieldsOf(md protoreflect.MessageDescriptor) map[string]protoreflect.FieldDescriptor {
	if v, ok := fieldsCache.Load(md); ok {
		return v.(map[string]protoreflect.FieldDescriptor)
	}
	fields := md.Fields()
	m := make(map[string]protoreflect.FieldDescriptor, 2*fields.Len())
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		m[fd.JSONName()] = fd
		m[string(fd.Name())] = fd
	}
	v, _ := fieldsCache.LoadOrStore(md, m)
	return v.(map[string]protoreflect.FieldDescriptor)
}

var fieldsCache sync.Map // protoreflect.MessageDescriptor -> map[string]protoreflect.FieldDescriptor
