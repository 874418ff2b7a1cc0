package streaming_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// FirstAt finds the first message stored at or after a time, by the
// stream's own timestamps, matching a filter.
func TestFirstAt(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "DIRECT", Subjects: []string{"d.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	put := func(subject string) uint64 {
		ack, err := js.Publish(ctx, subject, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	before := time.Now().Add(-time.Second)
	first := put("d.a")
	between := time.Now() // the server shares this clock: later stores are after it
	put("d.b")
	third := put("d.a")
	after := time.Now().Add(time.Second)

	tests := []struct {
		name    string
		filter  string
		at      time.Time
		want    uint64
		missing bool
	}{
		{name: "before everything", filter: "d.>", at: before, want: first},
		{name: "between two stores", filter: "d.>", at: between, want: first + 1},
		{name: "between two stores, filtered", filter: "d.a", at: between, want: third},
		{name: "after everything", filter: "d.>", at: after, missing: true},
	}
	for _, tc := range tests {
		m, err := streaming.FirstAt(ctx, js, "DIRECT", tc.filter, tc.at)
		switch {
		case tc.missing:
			if !errors.Is(err, streaming.ErrNotFound) {
				t.Errorf("%s: %v, %v; want ErrNotFound", tc.name, m, err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case m.Sequence != tc.want:
			t.Errorf("%s: sequence %d, want %d", tc.name, m.Sequence, tc.want)
		}
	}
}
