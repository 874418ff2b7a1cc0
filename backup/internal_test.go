package backup

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/jsm.go/api"
	"github.com/nats-io/nats.go"
)

// A transfer that stops moving data is ended with a reason; one that keeps
// moving is not, however long it takes; progress reports alone (jsm.go
// sends one a second) do not count as moving.
func TestWatchdog(t *testing.T) {
	t.Parallel()
	t.Run("stalled", func(t *testing.T) {
		t.Parallel()
		w := newWatchdog(context.Background(), 200*time.Millisecond)
		defer w.stop()
		w.moved(10)
		stop := time.After(5 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
	loop:
		for {
			select {
			case <-w.ctx.Done():
				break loop
			case <-tick.C:
				w.moved(10) // a report without progress
			case <-stop:
				t.Fatal("a stalled transfer was not ended")
			}
		}
		err := w.explain(context.Canceled)
		if !errors.Is(err, errIdle) {
			t.Fatalf("explain: %v, want the idle reason", err)
		}
	})
	t.Run("moving", func(t *testing.T) {
		t.Parallel()
		// Idle time well above the ticks: a loaded machine (go test -race
		// beside other packages) can hold a goroutine for a while.
		w := newWatchdog(context.Background(), 2*time.Second)
		defer w.stop()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		end := time.After(5 * time.Second)
		for n := uint64(1); ; n++ {
			select {
			case <-w.ctx.Done():
				t.Fatalf("a moving transfer was ended: %v", context.Cause(w.ctx))
			case <-tick.C:
				w.moved(n)
				continue
			case <-end:
			}
			break
		}
		if err := w.explain(errors.New("other")); err.Error() != "other" {
			t.Fatalf("explain of another error: %v", err)
		}
	})
}

func TestOlder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		have, want string
		older      bool
	}{
		{"2.15.2", "2.15.2", false},
		{"2.15.0", "2.15.2", false}, // same release, older patch: same format
		{"2.16.0", "2.15.2", false},
		{"3.0.0", "2.15.2", false},
		{"2.11.4", "2.15.2", true},
		{"1.99.0", "2.0.0", true},
		{"v2.10.1", "2.11.0", true},
		{"2.15.0-beta.1", "2.15.2", false},
		{"", "2.15.2", false}, // unknown: not judged
		{"2.15.2", "unknown", false},
	} {
		if got := older(tc.have, tc.want); got != tc.older {
			t.Errorf("older(%q, %q) = %v, want %v", tc.have, tc.want, got, tc.older)
		}
	}
}

// A restore attempt is retried only for refusals of the moment.
func TestRetryable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{api.ApiError{Code: 500, ErrCode: errNoSuitablePeers, Description: "no suitable peers for placement, peer offline"}, true},
		{fmt.Errorf("restore: %w", nats.ErrNoResponders), true},
		{nats.ErrTimeout, true},
		{api.ApiError{Code: 400, ErrCode: 10065, Description: "subjects overlap with an existing stream"}, false},
		{api.ApiError{Code: 400, ErrCode: 10058, Description: "stream name already in use"}, false},
		{errors.New("restored 3 messages; the backup has 4"), false},
		{context.Canceled, false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
