package billing

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// publishCall publishes one call's events as billing.CallMessage does.
func publishCall(t testing.TB, js jetstream.JetStream, events ...event.Event) {
	t.Helper()
	m, err := CallMessage(events)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(m.Subject)
	msg.Data = m.Data
	msg.Header.Set(jetstream.MsgIDHeader, m.MsgID)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
}

// A call's events travel as one message: a JSON array of CloudEvents that
// the SDK reads back as the events built, and a single event as before.
func TestCallMessage(t *testing.T) {
	t.Parallel()
	a, b := sampleEvent(t, "cm", 0, "tenant-1"), sampleEvent(t, "cm", 1, "tenant-1")
	m, err := CallMessage([]event.Event{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != BatchSubject || !strings.HasPrefix(m.MsgID, "batch-") {
		t.Errorf("subject %s, msg id %s", m.Subject, m.MsgID)
	}
	// The msg id is the same for a copy and differs for any other set of
	// events — also one that starts with the same id and has as many
	// (a run's events, and its replay batched with another call).
	c := sampleEvent(t, "cm", 2, "tenant-1")
	for _, other := range [][]event.Event{{a, c}, {b, a}, {a, b, c}, {a}} {
		if len(other) == 1 {
			continue
		}
		o, err := CallMessage(other)
		if err != nil {
			t.Fatal(err)
		}
		if o.MsgID == m.MsgID {
			t.Errorf("batches %v and [a b] share the msg id %s", other, m.MsgID)
		}
	}
	if again, _ := CallMessage([]event.Event{a, b}); again.MsgID != m.MsgID {
		t.Errorf("a copy of the batch has msg id %s, want %s", again.MsgID, m.MsgID)
	}
	parts, err := SplitMessage(m.Subject, m.Data)
	if err != nil || len(parts) != 2 {
		t.Fatalf("split: %d parts, %v", len(parts), err)
	}
	for i, want := range []event.Event{a, b} {
		var got event.Event
		if err := got.UnmarshalJSON(parts[i]); err != nil {
			t.Fatalf("part %d is not a CloudEvent: %v\n%s", i, err, parts[i])
		}
		if got.ID() != want.ID() || got.Type() != want.Type() || got.Subject() != want.Subject() || got.Source() != want.Source() ||
			!got.Time().Equal(want.Time()) || string(got.Data()) != string(want.Data()) || got.DataContentType() != want.DataContentType() {
			t.Errorf("part %d: %+v, want %+v", i, got, want)
		}
		if err := validate(&got); err != nil {
			t.Errorf("part %d: %v", i, err)
		}
	}
	one, err := CallMessage([]event.Event{a})
	if err != nil || one.Subject != EventSubject(a.Type()) || one.MsgID != a.ID() {
		t.Errorf("single: %+v %v", one, err)
	}
	if _, err := CallMessage(nil); err == nil {
		t.Error("an empty call message was built")
	}
	bad := a.Clone()
	bad.SetSubject("")
	if _, err := CallMessage([]event.Event{b, bad}); err == nil {
		t.Error("a batch with an event without a subject was built")
	}
}

// The sink delivers every event of a batch message once and acknowledges
// the message; an event OpenMeter rejects is dead-lettered alone while the
// rest of its batch is delivered; a batch that is not an array is
// dead-lettered whole.
func TestProcessorDeliversBatchMessages(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var want []string
	for i := range 40 {
		a, b := sampleEvent(t, "batch", 2*i, "tenant-b"), sampleEvent(t, "batch", 2*i+1, "tenant-b")
		publishCall(t, h.js, a, b)
		want = append(want, a.ID(), b.ID())
	}
	good := sampleEvent(t, "mixed", 0, "tenant-b")
	poison := sampleEvent(t, "mixed", 5, poisonSubject)
	publishCall(t, h.js, good, poison)
	want = append(want, good.ID())
	ctx := context.Background()
	if _, err := h.js.Publish(ctx, BatchSubject, []byte(`{"not":"an array"}`)); err != nil {
		t.Fatal(err)
	}
	r := h.start(h.config())
	h.waitDelivered(want, 15*time.Second)
	if st := h.om.stats(); st.unique != len(want) {
		t.Errorf("%d distinct events delivered, want %d", st.unique, len(want))
	}
	if h.om.times(poison.ID()) != 0 {
		t.Error("the poison event was accepted")
	}
	eventually(t, 10*time.Second, "both dead letters and every message acknowledged", func() bool {
		c, err := h.js.Consumer(ctx, StreamName, ConsumerName)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 &&
			metric(t, r.reg, "kgents_openmeter_dead_letters_total", nil) == 2
	})
	s, err := h.js.Stream(ctx, StreamName)
	if err != nil {
		t.Fatal(err)
	}
	dl, err := s.GetLastMsgForSubject(ctx, DeadLetterSubject(poison.Type()))
	if err != nil {
		t.Fatalf("the poison event's dead letter: %v", err)
	}
	var dead map[string]any
	if err := json.Unmarshal(dl.Data, &dead); err != nil || dead["id"] != poison.ID() {
		t.Errorf("dead letter holds %s (%v), want the poison event alone", dl.Data, err)
	}
	if got := dl.Header.Get(HeaderOriginalSubject); got != BatchSubject {
		t.Errorf("dead letter's original subject %q", got)
	}
	h.checkClean()
}
