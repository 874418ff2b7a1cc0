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
	// Backoffs long enough that at the kill it is almost surely waiting,
	// holding nothing, rather than posting its next batch (a batch it held
	// would wait for the ack wait, 10 s), and short enough that what it
	// handed back is soon redelivered.
	cfgA.BackoffBase, cfgA.BackoffMax = 3*time.Second, 3*time.Second
	// One worker: right after it hands a batch back it holds nothing for
	// 3 s (two workers would interleave, one of them possibly mid-batch
	// when the other's hand-back is seen).
	cfgA.Concurrency = 1
	handedBack := &lineCounter{word: "handed back for a retry"}
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
	// batch back (it is then waiting out its backoff).
	before := handedBack.count()
	eventually(t, 10*time.Second, "the victim retrying after the restart", func() bool {
		return handedBack.count() > before
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

// lineCounter counts the log writes that contain word.
type lineCounter struct {
	word string
	mu   sync.Mutex
	n    int
}

func (c *lineCounter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), c.word) {
		c.mu.Lock()
		c.n++
		c.mu.Unlock()
	}
	return len(p), nil
}

func (c *lineCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
