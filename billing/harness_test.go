package billing

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kgents/kgents-go/streaming/natstest"
)

const testKey = "om-test-key-3f9a1c"

// harness is a real embedded NATS with the metering stream and a real HTTP
// stand-in for OpenMeter.
type harness struct {
	t  *testing.T
	ns *natstest.Server
	js jetstream.JetStream
	om *fakeOpenMeter
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, ns: ns, js: js, om: newFakeOpenMeter(t, testKey)}
}

// config is a processor configuration with short timers, so the failure
// paths run in well under a second each.
func (h *harness) config() ProcessorConfig {
	return ProcessorConfig{
		Enabled:         true,
		BaseURL:         h.om.URL(),
		APIKey:          testKey,
		BatchSize:       25,
		FlushInterval:   50 * time.Millisecond,
		RequestTimeout:  400 * time.Millisecond,
		AckWait:         3 * time.Second,
		BackoffBase:     20 * time.Millisecond,
		BackoffMax:      200 * time.Millisecond,
		MaxRetryAfter:   3 * time.Second,
		ShutdownGrace:   300 * time.Millisecond,
		BacklogInterval: 50 * time.Millisecond,
		Registerer:      prometheus.NewRegistry(),
		Logger:          slog.New(slog.NewTextHandler(h.t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// running is a processor whose Run is in a goroutine.
type running struct {
	p    *Processor
	reg  *prometheus.Registry
	stop func() // cancels Run and waits for it (idempotent)
}

// start runs a processor on its own NATS connection (as another replica
// would have).
func (h *harness) start(cfg ProcessorConfig) *running {
	h.t.Helper()
	_, js := h.ns.Connect(h.t)
	return h.startOn(js, cfg)
}

// startOn runs a processor on js.
func (h *harness) startOn(js jetstream.JetStream, cfg ProcessorConfig) *running {
	h.t.Helper()
	p, err := NewProcessor(js, cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			bound := cfg.ShutdownGrace + cfg.FlushInterval + 3*time.Second
			select {
			case err := <-done:
				if err != nil {
					h.t.Errorf("Run: %v", err)
				}
			case <-time.After(bound):
				h.t.Errorf("Run did not return within %s of its context ending", bound)
			}
		})
	}
	h.t.Cleanup(stop)
	reg, _ := cfg.Registerer.(*prometheus.Registry)
	return &running{p: p, reg: reg, stop: stop}
}

// publish stores n events of every type in turn, for a few tenants, with
// ids derived from tag, and returns their ids.
func (h *harness) publish(tag string, n int) []string {
	h.t.Helper()
	return publishEvents(h.t, h.js, tag, 0, n)
}

func publishEvents(t testing.TB, js jetstream.JetStream, tag string, from, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := make([]string, 0, n)
	for i := from; i < from+n; i++ {
		ev := sampleEvent(t, tag, i, fmt.Sprintf("tenant-%d", i%3))
		for attempt := 0; ; attempt++ {
			err := Publish(ctx, js, ev)
			if err == nil {
				break
			}
			if ctx.Err() != nil || attempt > 100 {
				t.Fatalf("publish %d: %v", i, err)
			}
			time.Sleep(50 * time.Millisecond) // NATS restarting
		}
		ids = append(ids, ev.ID())
	}
	return ids
}

// waitDelivered waits until OpenMeter accepted every id.
func (h *harness) waitDelivered(ids []string, timeout time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		missing := h.om.missing(ids)
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d of %d events never reached OpenMeter (first: %s); stand-in: %+v",
				len(missing), len(ids), missing[0], h.om.stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventually polls cond until it holds.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkClean fails the test if the stand-in saw an invalid request.
func (h *harness) checkClean() {
	h.t.Helper()
	if v := h.om.stats().violations; len(v) > 0 {
		h.t.Fatalf("invalid requests reached OpenMeter: %q", v)
	}
}

// metric reads a counter or gauge (sum over series matching labels).
func metric(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}
