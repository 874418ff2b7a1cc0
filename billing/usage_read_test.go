package billing

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// oracleEvents is what the reader must agree with: a JSON library decoding
// each event (of a batch, split first) into usageEvent, the way the rollup
// read them before — with names matched exactly, as CloudEvents attributes
// are (encoding/json would also take "ID" for "id"; the sink would not).
func oracleEvents(subject string, data []byte, stored time.Time) []usageEvent {
	parts := [][]byte{data}
	if IsBatch(subject) {
		var raw []json.RawMessage
		if json.Unmarshal(data, &raw) != nil {
			return nil
		}
		parts = parts[:0]
		for _, r := range raw {
			parts = append(parts, r)
		}
	}
	var out []usageEvent
	for _, p := range parts {
		var ev usageEvent
		if err := jsonv2.Unmarshal(p, &ev, jsontext.AllowDuplicateNames(true)); err != nil || ev.Subject == "" || ev.ID == "" {
			continue
		}
		if ev.Time.IsZero() {
			ev.Time = stored
		}
		out = append(out, ev)
	}
	return out
}

func TestUsageReaderAgreesWithEncodingJSON(t *testing.T) {
	t.Parallel()
	stored := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	var evs []event.Event
	for i := range 5 {
		evs = append(evs, sampleEvent(t, "reader", i, "tenant-r"))
	}
	batch, err := CallMessage(evs)
	if err != nil {
		t.Fatal(err)
	}
	single, err := CallMessage(evs[1:2])
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, subject, data string
	}{
		{"batch of five", batch.Subject, string(batch.Data)},
		{"one event", single.Subject, string(single.Data)},
		{"no time", EventSubject(TypeAPIRequest), `{"id":"a","subject":"t","type":"api.request","data":{"status_code":500}}`},
		{"no id", EventSubject(TypeAPIRequest), `{"subject":"t","type":"api.request"}`},
		{"no subject", EventSubject(TypeAPIRequest), `{"id":"a","type":"api.request"}`},
		{"status as a string", EventSubject(TypeAPIRequest), `{"id":"a","subject":"t","data":{"status_code":"500"}}`},
		{"bad time", EventSubject(TypeAPIRequest), `{"id":"a","subject":"t","time":"yesterday"}`},
		{"extra fields and nesting", EventSubject(TypeLLMTokens), `{"x":[1,{"y":null}],"id":"a","subject":"t","type":"llm.tokens","data":{"deep":{"tokens_total":9},"tokens_total":42.0}}`},
		{"data not an object", EventSubject(TypeLLMTokens), `{"id":"a","subject":"t","data":[1,2]}`},
		{"not JSON", EventSubject(TypeLLMTokens), `{"id":"a",`},
		{"batch with a bad element", BatchSubject, `[{"id":"a","subject":"t"},{"id":"b","subject":"t","data":{"status_code":"x"}},{"id":"c","subject":"t"}]`},
		{"batch with a non-object", BatchSubject, `[{"id":"a","subject":"t"},7,{"id":"c","subject":"t"}]`},
		{"batch not an array", BatchSubject, `{"id":"a","subject":"t"}`},
		{"empty batch", BatchSubject, `[]`},
		{"null type and time", EventSubject(TypeAPIRequest), `{"id":"a","subject":"t","type":null,"time":null,"data":null}`},
		{"escaped strings", EventSubject(TypeAPIRequest), `{"id":"a\u0041","subject":"t\"q","type":"api.request"}`},
	}
	var r usageReader
	for _, tc := range cases {
		got := r.read(tc.subject, []byte(tc.data), stored, nil)
		want := oracleEvents(tc.subject, []byte(tc.data), stored)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, want)
		}
	}
}

func BenchmarkUsageReader(b *testing.B) {
	var evs []event.Event
	for i := range 2 {
		evs = append(evs, sampleEvent(b, "bench", i, "tenant-b"))
	}
	m, err := CallMessage(evs)
	if err != nil {
		b.Fatal(err)
	}
	stored := time.Now()
	b.Run("reader", func(b *testing.B) {
		var r usageReader
		var out []usageEvent
		b.ReportAllocs()
		for b.Loop() {
			out = r.read(m.Subject, m.Data, stored, out[:0])
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = oracleEvents(m.Subject, m.Data, stored)
		}
	})
}

// FuzzUsageReader: on any bytes, single or batch, the reader never panics
// and counts exactly what encoding/json would.
func FuzzUsageReader(f *testing.F) {
	f.Add(false, `{"id":"a","subject":"t","type":"api.request","time":"2026-01-02T03:04:05Z","data":{"status_code":404}}`)
	f.Add(true, `[{"id":"a","subject":"t"},{"id":"b","subject":"t","data":{"tokens_total":3}}]`)
	f.Add(true, `[1,"x",null,{"id":"c","subject":"t"}]`)
	f.Add(false, `{"id":"a","subject":"t","data":{"status_code":1e400}}`)
	stored := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, batch bool, data string) {
		subject := EventSubject(TypeAPIRequest)
		if batch {
			subject = BatchSubject
		}
		if !json.Valid([]byte(data)) {
			return // the sink dead-letters what is not JSON; counting it is moot
		}
		var r usageReader
		got := r.read(subject, []byte(data), stored, nil)
		want := oracleEvents(subject, []byte(data), stored)
		if len(got) == 0 && len(want) == 0 {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v\nwant %+v", got, want)
		}
	})
}
