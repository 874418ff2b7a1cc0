package apijson

import (
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// wkt is a well-known type whose JSON form is not an object of its fields.
type wkt uint8

const (
	notWKT wkt = iota
	wktTimestamp
	wktDuration
	wktStruct
	wktValue
	wktListValue
	wktEmpty
	wktWrapper
)

func wellKnown(name protoreflect.FullName) wkt {
	if len(name) < 16 || name[:16] != "google.protobuf." {
		return notWKT
	}
	switch name[16:] {
	case "Timestamp":
		return wktTimestamp
	case "Duration":
		return wktDuration
	case "Struct":
		return wktStruct
	case "Value":
		return wktValue
	case "ListValue":
		return wktListValue
	case "Empty":
		return wktEmpty
	case "BoolValue", "Int32Value", "Int64Value", "UInt32Value", "UInt64Value",
		"FloatValue", "DoubleValue", "StringValue", "BytesValue":
		return wktWrapper
	}
	return notWKT
}

func (w wkt) encode(b []byte, m protoreflect.Message) []byte {
	switch w {
	case wktTimestamp:
		return encodeTimestamp(b, m)
	case wktDuration:
		return encodeDuration(b, m)
	case wktStruct:
		return encodeStruct(b, m)
	case wktValue:
		return encodeValue(b, m)
	case wktListValue:
		return encodeListValue(b, m)
	case wktEmpty:
		return append(b, '{', '}')
	default:
		return encodeWrapper(b, m)
	}
}

func (w wkt) decode(d *decoder, m protoreflect.Message) error {
	switch w {
	case wktTimestamp:
		return decodeTimestamp(d, m)
	case wktDuration:
		return decodeDuration(d, m)
	case wktStruct:
		return decodeStruct(d, m)
	case wktValue:
		return decodeValue(d, m)
	case wktListValue:
		return decodeListValue(d, m)
	case wktEmpty:
		return decodeEmpty(d, m)
	default:
		return decodeWrapper(d, m)
	}
}

func encodeTimestamp(b []byte, m protoreflect.Message) []byte {
	ts, ok := m.Interface().(*timestamppb.Timestamp)
	if !ok {
		fields := m.Descriptor().Fields()
		ts = &timestamppb.Timestamp{
			Seconds: m.Get(fields.ByNumber(1)).Int(),
			Nanos:   int32(m.Get(fields.ByNumber(2)).Int()),
		}
	}
	return AppendTimestamp(b, ts.AsTime())
}

func encodeDuration(b []byte, m protoreflect.Message) []byte {
	fields := m.Descriptor().Fields()
	d := time.Duration(m.Get(fields.ByNumber(1)).Int())*time.Second + time.Duration(m.Get(fields.ByNumber(2)).Int())
	b = append(b, '"')
	b = strconv.AppendFloat(b, d.Seconds(), 'f', -1, 64)
	return append(b, 's', '"')
}

func encodeWrapper(b []byte, m protoreflect.Message) []byte {
	fd := m.Descriptor().Fields().ByNumber(1)
	return appendSingular(b, fd, m.Get(fd))
}

func encodeStruct(b []byte, m protoreflect.Message) []byte {
	s, ok := m.Interface().(*structpb.Struct)
	if !ok {
		return append(b, '{', '}')
	}
	return appendStruct(b, s)
}

func appendStruct(b []byte, s *structpb.Struct) []byte {
	keys := make([]string, 0, len(s.GetFields()))
	for k := range s.GetFields() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendValue(b, s.GetFields()[k])
	}
	return append(b, '}')
}

func encodeValue(b []byte, m protoreflect.Message) []byte {
	v, ok := m.Interface().(*structpb.Value)
	if !ok {
		return append(b, "null"...)
	}
	return appendValue(b, v)
}

func encodeListValue(b []byte, m protoreflect.Message) []byte {
	l, ok := m.Interface().(*structpb.ListValue)
	if !ok {
		return append(b, '[', ']')
	}
	return appendList(b, l)
}

func appendList(b []byte, l *structpb.ListValue) []byte {
	b = append(b, '[')
	for i, v := range l.GetValues() {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendValue(b, v)
	}
	return append(b, ']')
}

func appendValue(b []byte, v *structpb.Value) []byte {
	switch k := v.GetKind().(type) {
	case *structpb.Value_BoolValue:
		return strconv.AppendBool(b, k.BoolValue)
	case *structpb.Value_NumberValue:
		return appendFloat(b, k.NumberValue, 64)
	case *structpb.Value_StringValue:
		return appendString(b, k.StringValue)
	case *structpb.Value_StructValue:
		return appendStruct(b, k.StructValue)
	case *structpb.Value_ListValue:
		return appendList(b, k.ListValue)
	default:
		return append(b, "null"...)
	}
}

func sortMapKeys(keys []protoreflect.MapKey) {
	slices.SortFunc(keys, func(a, b protoreflect.MapKey) int {
		switch av := a.Interface().(type) {
		case string:
			bv := b.Interface().(string)
			switch {
			case av < bv:
				return -1
			case av > bv:
				return 1
			}
			return 0
		case bool:
			bv := b.Interface().(bool)
			switch {
			case av == bv:
				return 0
			case !av:
				return -1
			}
			return 1
		case int32, int64:
			ai, bi := a.Int(), b.Int()
			switch {
			case ai < bi:
				return -1
			case ai > bi:
				return 1
			}
			return 0
		default:
			au, bu := a.Uint(), b.Uint()
			switch {
			case au < bu:
				return -1
			case au > bu:
				return 1
			}
			return 0
		}
	})
}

// Decoding of well-known types.

func decodeTimestamp(d *decoder, m protoreflect.Message) error {
	s, err := d.stringValue()
	if err != nil {
		return err
	}
	t, perr := time.Parse(time.RFC3339Nano, s)
	if perr != nil {
		return d.fieldErr("expected an RFC 3339 timestamp")
	}
	ts := timestamppb.New(t)
	fields := m.Descriptor().Fields()
	m.Set(fields.ByNumber(1), protoreflect.ValueOfInt64(ts.GetSeconds()))
	m.Set(fields.ByNumber(2), protoreflect.ValueOfInt32(ts.GetNanos()))
	return nil
}

func decodeDuration(d *decoder, m protoreflect.Message) error {
	s, err := d.stringValue()
	if err != nil {
		return err
	}
	dur, perr := time.ParseDuration(s)
	if perr != nil {
		return d.fieldErr(`expected a duration such as "1.5s"`)
	}
	pb := durationpb.New(dur)
	fields := m.Descriptor().Fields()
	m.Set(fields.ByNumber(1), protoreflect.ValueOfInt64(pb.GetSeconds()))
	m.Set(fields.ByNumber(2), protoreflect.ValueOfInt32(pb.GetNanos()))
	return nil
}

func decodeEmpty(d *decoder, _ protoreflect.Message) error {
	return d.skipObject()
}

func decodeWrapper(d *decoder, m protoreflect.Message) error {
	fd := m.Descriptor().Fields().ByNumber(1)
	v, err := d.scalar(fd)
	if err != nil {
		return err
	}
	m.Set(fd, v)
	return nil
}

func decodeStruct(d *decoder, m protoreflect.Message) error {
	v, err := d.jsonValue()
	if err != nil {
		return err
	}
	sv, ok := v.GetKind().(*structpb.Value_StructValue)
	if !ok {
		return d.fieldErr("expected an object")
	}
	proto2struct(m, sv.StructValue)
	return nil
}

func decodeValue(d *decoder, m protoreflect.Message) error {
	v, err := d.jsonValue()
	if err != nil {
		return err
	}
	copyInto(m, v.ProtoReflect())
	return nil
}

func decodeListValue(d *decoder, m protoreflect.Message) error {
	v, err := d.jsonValue()
	if err != nil {
		return err
	}
	lv, ok := v.GetKind().(*structpb.Value_ListValue)
	if !ok {
		return d.fieldErr("expected an array")
	}
	copyInto(m, lv.ListValue.ProtoReflect())
	return nil
}

func proto2struct(m protoreflect.Message, s *structpb.Struct) {
	copyInto(m, s.ProtoReflect())
}

// copyInto sets every populated field of src on dst (same message type).
func copyInto(dst, src protoreflect.Message) {
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dst.Set(fd, v)
		return true
	})
}
