package server

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/streaming"
)

type publishedMessages []streaming.Message

func (p *publishedMessages) Publish(m streaming.Message) { *p = append(*p, m) }

// TestMeteringOutbox: a batch of usage events goes out as one message; an
// event that cannot be encoded is dropped alone, the others still go out.
func TestMeteringOutbox(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	good := func(n int) event.Event {
		ev, err := billing.NewAPIRequest(billing.EventID("base", billing.TypeAPIRequest, n), "tenant-1", at, billing.APIRequest{Endpoint: "/v1/soul/dialogue", Method: "POST", StatusCode: 200})
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	bad := good(99)
	bad.SetSubject("") // no tenant: refused by billing.CallMessage

	cases := []struct {
		name     string
		events   []event.Event
		wantMsgs int
		wantIDs  []string
	}{
		{"one call's events in one message", []event.Event{good(0), good(1), good(2)}, 1, []string{good(0).ID(), good(1).ID(), good(2).ID()}},
		{"a bad event is dropped alone", []event.Event{good(0), bad, good(2)}, 2, []string{good(0).ID(), good(2).ID()}},
		{"a bad event on its own", []event.Event{bad}, 0, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var pub publishedMessages
			o := &meteringOutbox{pub: &pub, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			o.Emit(tc.events)
			if len(pub) != tc.wantMsgs {
				t.Fatalf("%d messages, want %d", len(pub), tc.wantMsgs)
			}
			var ids []string
			for _, m := range pub {
				evs, err := billing.SplitMessage(m.Subject, m.Data)
				if err != nil {
					t.Fatal(err)
				}
				for _, raw := range evs {
					var ev event.Event
					if err := ev.UnmarshalJSON(raw); err != nil {
						t.Fatal(err)
					}
					ids = append(ids, ev.ID())
				}
			}
			if len(ids) != len(tc.wantIDs) {
				t.Fatalf("published events %v, want %v", ids, tc.wantIDs)
			}
			for i := range ids {
				if ids[i] != tc.wantIDs[i] {
					t.Fatalf("published events %v, want %v", ids, tc.wantIDs)
				}
			}
		})
	}
}
