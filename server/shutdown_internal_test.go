package server

import (
	"bytes"
	"context"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/kgents/kgents-go/config"
	"github.com/kgents/kgents-go/telemetry"
)

// TestShutdownFitsTheTimeout: whatever hangs, Serve returns within
// SHUTDOWN_TIMEOUT of the signal. A background loop that ignores its
// context is left running (and named in the log) at the stop deadline
// instead of being waited for; a closer that uses all the time it is given
// still ends by the deadline, and the flush gets at least its reserve.
func TestShutdownFitsTheTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 2 * time.Second
	// sched is the only tolerance: the scheduling of goroutines between the
	// signal and shutdown's start, and between a timer firing and Serve
	// returning, on a shared loaded machine — not any work.
	const sched = 150 * time.Millisecond
	cases := []struct {
		name         string
		stuckTask    bool // a background loop that never returns
		greedyCloser bool // a closer that blocks until its context ends
	}{
		{"a background loop ignores its context", true, false},
		{"a closer uses all its time", false, true},
		{"both", true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := config.Load(config.MapLookup(map[string]string{
				"LISTEN_HOST": "127.0.0.1", "HTTP_PORT": "0", "GRPC_PORT": "0",
				"KGENTS_DATA_DIR": t.TempDir(), "NATS_EMBEDDED_PORT": "-1", "KGENTS_DEV_KEYS": "true",
				"SHUTDOWN_DRAIN": "0.2", "SHUTDOWN_TIMEOUT": timeout.String(), "LOG_LEVEL": "info",
			}))
			if err != nil {
				t.Fatal(err)
			}
			logs := &lockedBuffer{}
			s, err := New(context.Background(), cfg, Options{Logger: telemetry.NewLogger(logs, "text", cfg.Log.Level)})
			if err != nil {
				t.Fatal(err)
			}
			release := make(chan struct{})
			defer close(release)
			if tc.stuckTask {
				s.background("stuck-for-the-test", func(context.Context) { <-release })
			}
			var mu sync.Mutex
			var flushDeadline time.Time
			var flushGot time.Duration
			if tc.greedyCloser {
				// First in the list: closers run in reverse, so it runs
				// last, after NATS has closed, taking whatever is left.
				s.closers = append([]func(context.Context) error{func(ctx context.Context) error {
					d, _ := ctx.Deadline()
					mu.Lock()
					flushDeadline, flushGot = d, time.Until(d)
					mu.Unlock()
					<-ctx.Done()
					return nil
				}}, s.closers...)
			}

			ctx, cancel := context.WithCancel(context.Background())
			served := make(chan error, 1)
			go func() { served <- s.Serve(ctx) }()
			select {
			case <-s.Ready():
			case err := <-served:
				t.Fatalf("Serve ended before ready: %v\n%s", err, logs.String())
			}
			signalled := time.Now()
			cancel()
			select {
			case err := <-served:
				took := time.Since(signalled)
				if err != nil {
					t.Errorf("Serve returned %v", err)
				}
				if took > timeout+sched {
					t.Errorf("Serve returned %v after the signal; SHUTDOWN_TIMEOUT is %v", took, timeout)
				}
				t.Logf("Serve returned %v after the signal (SHUTDOWN_TIMEOUT %v)", took.Round(time.Millisecond), timeout)
			case <-time.After(timeout + 10*time.Second):
				t.Fatalf("Serve still running %v after the signal (SHUTDOWN_TIMEOUT %v)\n%s", timeout+10*time.Second, timeout, logs.String())
			}
			if tc.greedyCloser {
				mu.Lock()
				d, got := flushDeadline, flushGot
				mu.Unlock()
				if d.IsZero() || d.After(signalled.Add(timeout+sched)) {
					t.Errorf("the flush's deadline is %v after the signal; SHUTDOWN_TIMEOUT is %v", d.Sub(signalled), timeout)
				}
				if tc.stuckTask && got < flushReserve(timeout)-200*time.Millisecond {
					t.Errorf("the last closer got %v; the flush reserve is %v", got, flushReserve(timeout))
				}
			}
			// The server's own loops all end with their context: only the
			// stuck one may be left, and it must be named.
			var left string
			if m := regexp.MustCompile(`background tasks still running at the stop deadline[^\n]*tasks="?\[([^\]]*)\]`).FindStringSubmatch(logs.String()); m != nil {
				left = m[1]
			}
			if want := map[bool]string{true: "stuck-for-the-test"}[tc.stuckTask]; left != want {
				t.Errorf("tasks left at the stop deadline: %q, want %q\n%s", left, want, logs.String())
			}
		})
	}
}

// lockedBuffer is a log sink the server writes to while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
