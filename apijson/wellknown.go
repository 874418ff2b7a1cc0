package apijson

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
)

// wkt is a well-known type, whose JSON form is not an object of its fields.
type wkt uint8

const (
	notWKT wkt = iota
	wktTimestamp
	wktStruct
	wktValue
	wktListValue
	wktWrapper // DoubleValue, Int64Value...: the value itself, by our rules
	// wktOther is every other google.protobuf message (Duration, Empty,
	// Any...): none is in the API, and protojson reads and writes them.
	wktOther
)

func wellKnown(name protoreflect.FullName) wkt {
	short, ok := strings.CutPrefix(string(name), "google.protobuf.")
	if !ok {
		return notWKT
	}
	switch short {
	case "Timestamp":
		return wktTimestamp
	case "Struct":
		return wktStruct
	case "Value":
		return wktValue
	case "ListValue":
		return wktListValue
	case "BoolValue", "Int32Value", "Int64Value", "UInt32Value", "UInt64Value",
		"FloatValue", "DoubleValue", "StringValue", "BytesValue":
		return wktWrapper
	}
	return wktOther
}

// Timestamps have the range protojson allows: years 1 to 9999.
const (
	minTimestamp = -62135596800 // 0001-01-01T00:00:00Z
	maxTimestamp = 253402300799 // 9999-12-31T23:59:59Z
)

func (d *decoder) wellKnown(w wkt, m protoreflect.Message) error {
	switch w {
	case wktTimestamp:
		const want = "expected an RFC 3339 timestamp"
		s, err := d.str(want)
		if err != nil {
			return err
		}
		t, perr := time.Parse(time.RFC3339Nano, s)
		// At most nanoseconds: the fraction ends where the zone begins.
		if frac := strings.IndexByte(s, '.'); perr != nil || frac >= 0 && strings.IndexAny(s[frac:], "Z+-")-1 > 9 {
			return d.fieldErr(want)
		}
		if t.Unix() < minTimestamp || t.Unix() > maxTimestamp {
			return d.fieldErr("timestamp out of range (years 1 to 9999)")
		}
		fields := m.Descriptor().Fields()
		m.Set(fields.ByNumber(1), protoreflect.ValueOfInt64(t.Unix()))
		m.Set(fields.ByNumber(2), protoreflect.ValueOfInt32(int32(t.Nanosecond())))
		return nil
	case wktStruct:
		s, err := d.jsonObject()
		if err != nil {
			return err
		}
		copyInto(m, s.ProtoReflect())
	case wktValue:
		v, err := d.jsonValue()
		if err != nil {
			return err
		}
		copyInto(m, v.ProtoReflect())
	case wktListValue:
		if d.dec.PeekKind() != jsontext.KindBeginArray {
			return d.typeErr("expected an array")
		}
		v, err := d.jsonValue()
		if err != nil {
			return err
		}
		copyInto(m, v.GetListValue().ProtoReflect())
	case wktWrapper:
		fd := m.Descriptor().Fields().ByNumber(1)
		v, err := d.scalar(fd)
		if err != nil {
			return err
		}
		m.Set(fd, v)
	default:
		raw, err := d.dec.ReadValue()
		if err != nil {
			return d.syntaxErr(err)
		}
		if err := protojson.Unmarshal(raw, m.Interface()); err != nil {
			return d.fieldErr(fmt.Sprintf("expected a %s", m.Descriptor().FullName()))
		}
	}
	return nil
}

// copyInto sets every populated field of src on dst (same message type).
func copyInto(dst, src protoreflect.Message) {
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dst.Set(fd, v)
		return true
	})
}

func (e *encoder) wellKnown(w wkt, m protoreflect.Message) {
	switch v := m.Interface().(type) {
	case *structpb.Struct:
		e.structFields(v.GetFields())
	case *structpb.Value:
		e.jsonValue(v)
	case *structpb.ListValue:
		e.jsonList(v)
	default:
		fields := m.Descriptor().Fields()
		switch w {
		case wktWrapper:
			e.singular(fields.ByNumber(1), m.Get(fields.ByNumber(1)))
		case wktTimestamp:
			t := time.Unix(m.Get(fields.ByNumber(1)).Int(), m.Get(fields.ByNumber(2)).Int())
			e.scratch = AppendTimestamp(e.scratch[:0], t)
			e.raw(e.scratch)
		default:
			b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(v)
			if err != nil && e.err == nil {
				e.err = err
			}
			e.raw(b)
		}
	}
}

func (e *encoder) structFields(fields map[string]*structpb.Value) {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys) // stable output
	e.token(jsontext.BeginObject)
	for _, k := range keys {
		e.token(jsontext.String(k))
		e.jsonValue(fields[k])
	}
	e.token(jsontext.EndObject)
}

func (e *encoder) jsonList(l *structpb.ListValue) {
	e.token(jsontext.BeginArray)
	for _, v := range l.GetValues() {
		e.jsonValue(v)
	}
	e.token(jsontext.EndArray)
}

func (e *encoder) jsonValue(v *structpb.Value) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_BoolValue:
		e.token(jsontext.Bool(k.BoolValue))
	case *structpb.Value_NumberValue:
		e.token(jsontext.Float(k.NumberValue))
	case *structpb.Value_StringValue:
		e.token(jsontext.String(k.StringValue))
	case *structpb.Value_StructValue:
		e.structFields(k.StructValue.GetFields())
	case *structpb.Value_ListValue:
		e.jsonList(k.ListValue)
	default:
		e.token(jsontext.Null)
	}
}
