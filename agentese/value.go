package agentese

import (
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// Small builders for results. Results are google.protobuf.Value trees built
// directly (no conversion from `any`, which could fail at run time).

// obj is an object under construction.
type obj map[string]*structpb.Value

// V finishes an object.
func (o obj) V() *structpb.Value { return structpb.NewStructValue(&structpb.Struct{Fields: o}) }

func str(s string) *structpb.Value   { return structpb.NewStringValue(s) }
func num(f float64) *structpb.Value  { return structpb.NewNumberValue(f) }
func integer(n int) *structpb.Value  { return structpb.NewNumberValue(float64(n)) }
func boolean(b bool) *structpb.Value { return structpb.NewBoolValue(b) }
func null() *structpb.Value          { return structpb.NewNullValue() }

// ts renders a time as RFC 3339 in UTC (the API's timestamp format).
func ts(t time.Time) *structpb.Value {
	if t.IsZero() {
		return null()
	}
	return str(t.UTC().Format(time.RFC3339))
}

// array makes a JSON array of values.
func array(vs ...*structpb.Value) *structpb.Value {
	if vs == nil {
		vs = []*structpb.Value{}
	}
	return structpb.NewListValue(&structpb.ListValue{Values: vs})
}

// strs makes a JSON array of strings (never null).
func strs(ss []string) *structpb.Value {
	vs := make([]*structpb.Value, len(ss))
	for i, s := range ss {
		vs[i] = str(s)
	}
	return array(vs...)
}

// round keeps n decimal places so results read cleanly and stay stable.
func round(f float64, places int) float64 {
	p := 1.0
	for range places {
		p *= 10
	}
	if f < 0 {
		return -float64(int64(-f*p+0.5)) / p
	}
	return float64(int64(f*p+0.5)) / p
}
