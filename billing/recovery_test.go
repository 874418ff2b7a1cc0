package billing

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestDeliveryWithinSecondsAfterOutageRestartAndKill is the burst of the
// issue: OpenMeter down while events pile up, two replicas' sinks holding
// batches in backoff, the NATS server restarted, one replica killed (its
// connection gone at once: it cannot hand anything back). Once OpenMeter
// is back every event must arrive within seconds — not after the
// consumer's ack wait, which is what the killed replica's batches waited.
func TestDeliveryWithinSecondsAfterOutageRestartAndKill(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.om.down()
	ids := h.publish("recovery", 400)

	cfg := h.config()
	cfg.AckWait = 0 // the production ack wait
	cfg.BackoffMax = 500 * time.Millisecond

	// The replica to be killed, on a connection of its own.
	nc, js := h.ns.Connect(t)
	cfgA := cfg
	cfgA.Registerer = prometheus.NewRegistry()
	// Backoffs of up to 3 s: short enough that what it handed back is soon
	// redelivered. The kill waits for a hand-back whose backoff (full
	// jitter, so anywhere in 0–3 s) is at least killMargin: then the victim
	// is waiting, holding nothing, rather than already holding its next
	// batch (which would wait for the ack wait, 10 s; CI caught a kill 4 ms
	// into a backoff of 3.9 ms).
	cfgA.BackoffBase, cfgA.BackoffMax = 3*time.Second, 3*time.Second
	const killMargin = time.Second
	// One worker: right after it hands a batch back it holds nothing for
	// its backoff (two workers would interleave, one of them possibly
	// mid-batch when the other's hand-back is seen).
	cfgA.Concurrency = 1
	handedBack := &handBackLog{}
	cfgA.Logger = slog.New(slog.NewTextHandler(handedBack, nil))
	victim, err := NewProcessor(js, cfgA)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- victim.Run(ctx) }()
	survivor := h.start(cfg)
	eventually(t, 10*time.Second, "both sinks failing", func() bool {
		return victim.Health().Status == "unhealthy" && survivor.p.Health().Status == "unhealthy"
	})

	h.ns.Restart()
	restarted := time.Now()
	eventually(t, 10*time.Second, "the victim back on NATS", nc.IsConnected)
	// Wait until the victim failed again after the restart and handed its
	// batch back with a backoff it is sure to be still waiting out.
	before := handedBack.count()
	eventually(t, 30*time.Second, "the victim handing back after the restart for at least "+killMargin.String(), func() bool {
		n, wait := handedBack.last()
		return n > before && wait >= killMargin
	})
	// kill -9: the connection goes first, so nothing is handed back.
	nc.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	h.om.up()
	recovered := time.Now()
	h.waitDelivered(ids, 3*time.Minute)
	took := time.Since(recovered)
	t.Logf("all %d events delivered %s after OpenMeter recovered, %s after the NATS restart (%+v)", len(ids),
		took.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond), h.om.stats())
	// Nothing waits for the ack wait: the killed sink held no batch (it
	// had handed its batch back for the backoff), and what was handed back
	// before the NATS restart was handed back again on reconnect (the
	// server forgets nak delays). Before: 119.5 s with a 2-minute ack wait;
	// 8-9.5 s (one 10 s ack wait after the restart) without the re-nak.
	if bound := 5 * time.Second; took > bound {
		t.Errorf("the last events arrived %s after recovery; want within %s", took.Round(time.Millisecond), bound)
	}
	h.checkClean()
}

// handBackLog reads the processor's log: how many batches it handed back
// for a retry, and the backoff of the last one.
type handBackLog struct {
	mu   sync.Mutex
	n    int
	wait time.Duration
}

func (l *handBackLog) Write(p []byte) (int, error) {
	line := string(p)
	if !strings.Contains(line, "handed back for a retry") {
		return len(p), nil
	}
	var wait time.Duration
	if _, after, ok := strings.Cut(line, " retry_in="); ok {
		field, _, _ := strings.Cut(after, " ")
		wait, _ = time.ParseDuration(strings.TrimSpace(field))
	}
	l.mu.Lock()
	l.n++
	l.wait = wait
	l.mu.Unlock()
	return len(p), nil
}

func (l *handBackLog) count() int {
	n, _ := l.last()
	return n
}

// last is the number of hand-backs so far and the last one's backoff.
func (l *handBackLog) last() (int, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n, l.wait
}
