package validate

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Codec is the server's protobuf codec. grpc-go turns every unmarshal error
// into Internal with its own text, and for unary calls decodes the request
// before any interceptor runs, so a caller's malformed bytes (or a string
// that is not UTF-8) would be answered as a server fault. This codec instead
// decodes such a request to an empty message marked malformed, with a
// description of what is wrong; the validate interceptor refuses it with
// InvalidArgument, after authentication, metering and quota have seen the
// call like any other.
//
// The mark is an unknown field only this codec writes: one a caller sends
// is removed when its message decodes.
type Codec struct{ base encoding.CodecV2 }

// NewCodec returns the codec (named "proto", so it serves every call).
func NewCodec() *Codec { return &Codec{base: encoding.GetCodecV2(protoenc.Name)} }

// Name is "proto".
func (c *Codec) Name() string { return protoenc.Name }

// Marshal is the stock protobuf codec's.
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

// Unmarshal decodes data into v; see Codec.
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	if err := proto.Unmarshal(b, m); err != nil {
		proto.Reset(m)
		r := m.ProtoReflect()
		r.SetUnknown(markBytes(describeMalformed(b, r.Descriptor())))
		return nil
	}
	if r := m.ProtoReflect(); len(r.GetUnknown()) > 0 {
		r.SetUnknown(withoutMark(r.GetUnknown()))
	}
	return nil
}

// markNumber is the unknown field carrying the mark: the highest field
// number protobuf allows, which no message of the API uses.
const markNumber protowire.Number = protowire.MaxValidNumber

func markBytes(reason string) []byte {
	b := protowire.AppendTag(nil, markNumber, protowire.BytesType)
	return protowire.AppendString(b, reason)
}

// malformed returns the codec's description of a request it could not
// decode, if m is one.
func malformed(m proto.Message) (string, bool) {
	u := m.ProtoReflect().GetUnknown()
	for len(u) > 0 {
		num, typ, n := protowire.ConsumeTag(u)
		if n < 0 {
			return "", false
		}
		u = u[n:]
		if num == markNumber && typ == protowire.BytesType {
			v, n := protowire.ConsumeString(u)
			return v, n >= 0
		}
		n = protowire.ConsumeFieldValue(num, typ, u)
		if n < 0 {
			return "", false
		}
		u = u[n:]
	}
	return "", false
}

// withoutMark drops any mark field from unknown fields a caller sent.
func withoutMark(u []byte) []byte {
	var out []byte
	for rest := u; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			return u // not ours to judge: the message decoded
		}
		m := protowire.ConsumeFieldValue(num, typ, rest[n:])
		if m < 0 {
			return u
		}
		if num != markNumber {
			out = append(out, rest[:n+m]...)
		}
		rest = rest[n+m:]
	}
	return out
}

// describeMalformed says what is wrong with b as md, naming the field when
// it is a string that is not UTF-8. The text is the API's, never the
// protobuf library's.
func describeMalformed(b []byte, md protoreflect.MessageDescriptor) string {
	if field := invalidUTF8Field(b, md, "", 0); field != "" {
		return field + ": not valid UTF-8"
	}
	return fmt.Sprintf("the request is not a valid %s message (malformed protobuf)", md.FullName())
}

// invalidUTF8Field walks wire data for the first string field whose bytes
// are not UTF-8, returning its dotted path ("" when there is none or the
// data is malformed in another way).
func invalidUTF8Field(b []byte, md protoreflect.MessageDescriptor, prefix string, depth int) string {
	if depth > 32 {
		return ""
	}
	fields := md.Fields()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		fd := fields.ByNumber(num)
		if typ != protowire.BytesType || fd == nil {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return ""
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		name := prefix + string(fd.Name())
		switch {
		case fd.Kind() == protoreflect.StringKind:
			if !utf8.Valid(v) {
				return name
			}
		case fd.IsMap():
			// A map entry's key or value: name the map.
			if inner := invalidUTF8Field(v, fd.Message(), "", depth+1); inner != "" {
				return name
			}
		case fd.Kind() == protoreflect.MessageKind:
			if inner := invalidUTF8Field(v, fd.Message(), name+".", depth+1); inner != "" {
				return inner
			}
		}
	}
	return ""
}
