package billing

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/kgents/kgents-go/streaming/natstest"
)

func TestProcessorHappyPath(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ids := h.publish("happy", 500)
	spans := tracetest.NewSpanRecorder()
	cfg := h.config()
	cfg.Tracer = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	r := h.start(cfg)
	h.waitDelivered(ids, 15*time.Second)

	st := h.om.stats()
	if st.raw != len(ids) || st.unique != len(ids) {
		t.Errorf("OpenMeter got %d deliveries of %d events; want each of %d exactly once", st.raw, st.unique, len(ids))
	}
	if st.maxBatch > 25 {
		t.Errorf("a batch held %d events; BatchSize is 25", st.maxBatch)
	}
	eventually(t, 5*time.Second, "backlog 0", func() bool { return r.p.Health().Backlog == 0 })
	hl := r.p.Health()
	if hl.Status != "healthy" || !hl.Configured || hl.LastSuccess == nil || hl.LastError != "" {
		t.Errorf("health %+v", hl)
	}
	if got := metric(t, r.reg, "kgents_openmeter_events_sent_total", nil); got != 500 {
		t.Errorf("events_sent_total = %v, want 500", got)
	}
	if got := metric(t, r.reg, "kgents_openmeter_events_sent_total", map[string]string{"event_type": "llm.tokens"}); got != 100 {
		t.Errorf("events_sent_total{llm.tokens} = %v, want 100", got)
	}
	if got := metric(t, r.reg, "kgents_openmeter_flush_latency_seconds", nil); got < 20 {
		t.Errorf("flush latency observed %v times, want one per request", got)
	}
	if got := metric(t, r.reg, "kgents_openmeter_events_buffered", nil); got != 0 {
		t.Errorf("events_buffered = %v, want 0", got)
	}
	traced := 0
	for _, s := range spans.Ended() {
		if s.Name() != "openmeter.flush" {
			continue
		}
		attrs := map[attribute.Key]attribute.Value{}
		for _, kv := range s.Attributes() {
			attrs[kv.Key] = kv.Value
		}
		if attrs["openmeter.outcome"].AsString() != "ok" {
			t.Errorf("span outcome %v", attrs["openmeter.outcome"])
		}
		traced += int(attrs["openmeter.event_count"].AsInt64())
	}
	if traced != 500 {
		t.Errorf("openmeter.flush spans account for %d events, want 500", traced)
	}
	h.checkClean()
}

func TestProcessorHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.om.then(fakeAction{status: 429, retryAfter: "1"})
	ids := h.publish("ratelimit", 40)
	cfg := h.config()
	cfg.Concurrency = 1
	r := h.start(cfg)
	h.waitDelivered(ids, 15*time.Second)

	times := h.om.requestTimes()
	if len(times) < 2 {
		t.Fatalf("%d requests", len(times))
	}
	if gap := times[1].Sub(times[0]); gap < 950*time.Millisecond {
		t.Errorf("retried %s after a 429 with Retry-After: 1", gap)
	}
	if st := h.om.stats(); st.raw != len(ids) {
		t.Errorf("%d deliveries of %d events: the retry must resend the same ids once", st.raw, len(ids))
	}
	if got := metric(t, r.reg, "kgents_openmeter_flush_errors_total", map[string]string{"reason": "rate_limited"}); got != 1 {
		t.Errorf("flush_errors_total{rate_limited} = %v, want 1", got)
	}
	h.checkClean()
}

func TestProcessorRetriesServerErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.om.then(fakeAction{status: 500}, fakeAction{status: 503}, fakeAction{status: 500}, fakeAction{status: 502})
	ids := h.publish("server", 60)
	r := h.start(h.config())
	h.waitDelivered(ids, 15*time.Second)

	if st := h.om.stats(); st.raw != len(ids) {
		t.Errorf("%d deliveries of %d events", st.raw, len(ids))
	}
	if got := metric(t, r.reg, "kgents_openmeter_flush_errors_total", map[string]string{"reason": "server"}); got != 4 {
		t.Errorf("flush_errors_total{server} = %v, want 4", got)
	}
	eventually(t, 5*time.Second, "healthy again", func() bool { return r.p.Health().Status == "healthy" })
	if hl := r.p.Health(); !strings.Contains(hl.LastError, "HTTP 50") || hl.LastErrorAt == nil {
		t.Errorf("health %+v should keep the last error", hl)
	}
	h.checkClean()
}

func TestProcessorRecoversFromTimeouts(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.om.then(fakeAction{hang: 5 * time.Second}, fakeAction{hang: 5 * time.Second})
	ids := h.publish("hang", 30)
	r := h.start(h.config()) // RequestTimeout 400ms
	h.waitDelivered(ids, 15*time.Second)

	if st := h.om.stats(); st.raw != len(ids) {
		t.Errorf("%d deliveries of %d events", st.raw, len(ids))
	}
	if got := metric(t, r.reg, "kgents_openmeter_flush_errors_total", map[string]string{"reason": "network"}); got != 2 {
		t.Errorf("flush_errors_total{network} = %v, want 2", got)
	}
	if hl := r.p.Health(); !strings.Contains(hl.LastError, "no response within") {
		t.Errorf("last error %q", hl.LastError)
	}
	h.checkClean()
}

func TestProcessorDeadLettersThePoisonEvent(t *testing.T) {
	t.Parallel()
	t.Run("atomic batches", func(t *testing.T) { t.Parallel(); testPoison(t, false) })
	// OpenMeter itself takes the events before the bad one: the halves
	// resend them, and its dedupe by id absorbs the copies.
	t.Run("OpenMeter's partial batches", func(t *testing.T) { t.Parallel(); testPoison(t, true) })
}

func testPoison(t *testing.T, nonAtomic bool) {
	h := newHarness(t)
	h.om.mu.Lock()
	h.om.nonAtomic = nonAtomic
	h.om.mu.Unlock()
	good := h.publish("poison", 150)
	ctx := context.Background()
	poison := sampleEvent(t, "poison-one", 0, poisonSubject) // an api.request
	if err := Publish(ctx, h.js, poison); err != nil {
		t.Fatal(err)
	}
	good = append(good, publishEvents(t, h.js, "poison", 150, 49)...)
	cfg := h.config()
	cfg.BatchSize = 100
	cfg.Concurrency = 1 // the poison is in one batch of 100
	r := h.start(cfg)
	h.waitDelivered(good, 15*time.Second)

	st := h.om.stats()
	// A copy is only possible when a request OpenMeter answered was
	// timed out here (RequestTimeout is 400ms: a starved machine).
	timedOut := metric(t, r.reg, "kgents_openmeter_flush_errors_total", map[string]string{"reason": "network"}) > 0
	if st.unique != len(good) || (!nonAtomic && !timedOut && st.raw != len(good)) {
		t.Errorf("%d deliveries of %d events; want the %d good ones exactly once", st.raw, st.unique, len(good))
	}
	t.Logf("poison: %d events, %d deliveries, %d duplicates by id", st.unique, st.raw, st.raw-st.unique)
	if h.om.times(poison.ID()) != 0 {
		t.Error("the poison event was accepted")
	}
	eventually(t, 5*time.Second, "the dead letter metric", func() bool {
		return metric(t, r.reg, "kgents_openmeter_dead_letters_total", map[string]string{"event_type": "api.request"}) == 1
	})
	s, err := h.js.Stream(ctx, StreamName)
	if err != nil {
		t.Fatal(err)
	}
	dl, err := s.GetLastMsgForSubject(ctx, "kgent.metering.dead.api.request")
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	want, _ := Marshal(poison)
	if string(dl.Data) != string(want) {
		t.Errorf("dead letter data %s, want the original %s", dl.Data, want)
	}
	if dl.Header.Get("Nats-Msg-Id") != "dead-"+poison.ID() || dl.Header.Get(HeaderDeadStatus) != "400" ||
		!strings.Contains(dl.Header.Get(HeaderDeadReason), "meter value is not a number") ||
		dl.Header.Get(HeaderOriginalSubject) != "kgent.metering.events.api.request" {
		t.Errorf("dead letter headers %v", dl.Header)
	}
	eventually(t, 5*time.Second, "backlog 0 (the poison acked)", func() bool { return r.p.Health().Backlog == 0 })
	if hl := r.p.Health(); hl.Status != "healthy" || !strings.Contains(hl.LastError, "dead-lettered") {
		t.Errorf("health %+v", hl)
	}
	h.checkClean()
}

func TestProcessorDeadLettersInvalidPayloads(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	for i, payload := range []string{
		`not json at all`,
		`{"id":"x1","source":"kgents-api","type":"api.request","subject":"t"}`,          // no specversion
		`{"specversion":"1.0","id":"x2","source":"kgents-api","type":"session.create"}`, // no subject
	} {
		m := nats.NewMsg("kgent.metering.events.api.request")
		m.Data = []byte(payload)
		m.Header.Set("Nats-Msg-Id", "raw-"+string(rune('a'+i)))
		if _, err := h.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	ids := h.publish("valid", 10)
	r := h.start(h.config())
	h.waitDelivered(ids, 10*time.Second)
	eventually(t, 5*time.Second, "three dead letters", func() bool {
		return metric(t, r.reg, "kgents_openmeter_dead_letters_total", nil) == 3
	})
	if st := h.om.stats(); st.raw != len(ids) {
		t.Errorf("%d deliveries; only the %d valid events should be sent", st.raw, len(ids))
	}
	eventually(t, 5*time.Second, "backlog 0", func() bool { return r.p.Health().Backlog == 0 })
	h.checkClean()
}

// TestProcessorRestart stops the sink mid-stream, while events keep coming,
// and starts another: nothing is lost; duplicates are bounded by the batches
// in flight and carry the same ids (OpenMeter's dedupe absorbs them).
func TestProcessorRestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	cfg := h.config()
	first := h.start(cfg)

	var ids []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		for chunk := range 20 {
			got := publishEvents(t, h.js, "restart", chunk*100, 100)
			mu.Lock()
			ids = append(ids, got...)
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	})
	eventually(t, 10*time.Second, "a first part delivered", func() bool { return h.om.stats().unique >= 300 })
	first.stop()
	cfg.Registerer = prometheus.NewRegistry()
	h.start(cfg)
	wg.Wait()
	h.waitDelivered(ids, 20*time.Second)

	st := h.om.stats()
	t.Logf("restart: %d events, %d deliveries, %d duplicates (same ids, deduplicated by OpenMeter)", st.unique, st.raw, st.raw-st.unique)
	if dup := st.raw - st.unique; dup > cfg.BatchSize*DefaultConcurrency {
		t.Errorf("%d duplicates; at most the batches in flight (%d) may be resent", dup, cfg.BatchSize*DefaultConcurrency)
	}
	h.checkClean()
}

// TestProcessorSurvivesNATSRestart restarts the NATS server under the sink.
func TestProcessorSurvivesNATSRestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ids := h.publish("natsrestart", 600)
	cfg := h.config()
	h.start(cfg)
	eventually(t, 10*time.Second, "a first part delivered", func() bool { return h.om.stats().unique >= 100 })
	h.ns.Restart()
	ids = append(ids, publishEvents(t, h.js, "natsrestart", 600, 300)...)
	h.waitDelivered(ids, 25*time.Second)

	st := h.om.stats()
	t.Logf("NATS restart: %d events, %d deliveries, %d duplicates", st.unique, st.raw, st.raw-st.unique)
	h.checkClean()
}

// TestProcessorWaitsOutAnOpenMeterOutage: connection refused for a while,
// then everything arrives.
func TestProcessorWaitsOutAnOpenMeterOutage(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.om.down()
	ids := h.publish("outage", 200)
	r := h.start(h.config())
	eventually(t, 5*time.Second, "unhealthy", func() bool { return r.p.Health().Status == "unhealthy" })
	hl := r.p.Health()
	if hl.Backlog != 200 || hl.LastSuccess != nil || !strings.Contains(hl.LastError, "refused") {
		t.Errorf("health during the outage %+v", hl)
	}
	eventually(t, 5*time.Second, "several failed flushes", func() bool {
		return metric(t, r.reg, "kgents_openmeter_flush_errors_total", map[string]string{"reason": "network"}) >= 2
	})
	h.om.up()
	h.waitDelivered(ids, 15*time.Second)
	eventually(t, 5*time.Second, "healthy and drained", func() bool {
		hl := r.p.Health()
		return hl.Status == "healthy" && hl.Backlog == 0
	})
	if st := h.om.stats(); st.raw != len(ids) {
		t.Errorf("%d deliveries of %d events", st.raw, len(ids))
	}
	if got := metric(t, r.reg, "kgents_openmeter_flush_errors_total", map[string]string{"reason": "network"}); got < 2 {
		t.Errorf("flush_errors_total{network} = %v", got)
	}
	h.checkClean()
}

// TestProcessorUnauthorized: a wrong key is reported (without the key) and
// retried with backoff until the configuration is fixed.
func TestProcessorUnauthorized(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.om.setKey("another-key")
	ids := h.publish("auth", 20)
	r := h.start(h.config())
	eventually(t, 5*time.Second, "unhealthy", func() bool { return r.p.Health().Status == "unhealthy" })
	hl := r.p.Health()
	if !strings.Contains(hl.LastError, "HTTP 401") || strings.Contains(hl.LastError, testKey) {
		t.Errorf("last error %q: want the 401, never the key", hl.LastError)
	}
	h.om.setKey(testKey)
	h.waitDelivered(ids, 10*time.Second)
	if got := metric(t, r.reg, "kgents_openmeter_flush_errors_total", map[string]string{"reason": "client"}); got < 1 {
		t.Errorf("flush_errors_total{client} = %v", got)
	}
	h.checkClean()
}

// TestTwoProcessorsShareTheWork runs two replicas' sinks on one stream.
func TestTwoProcessorsShareTheWork(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.start(h.config())
	b := h.start(h.config())
	var ids []string
	for chunk := range 10 {
		ids = append(ids, publishEvents(t, h.js, "two", chunk*200, 200)...)
	}
	h.waitDelivered(ids, 20*time.Second)

	st := h.om.stats()
	sentA := metric(t, a.reg, "kgents_openmeter_events_sent_total", nil)
	sentB := metric(t, b.reg, "kgents_openmeter_events_sent_total", nil)
	t.Logf("two sinks: %d events, %d deliveries, %d duplicates; a sent %v, b sent %v", st.unique, st.raw, st.raw-st.unique, sentA, sentB)
	// JetStream hands each event to one sink; a duplicate needs an ack
	// that was not confirmed in time (a machine starved for seconds).
	if dup := st.raw - st.unique; dup > 25 {
		t.Errorf("%d duplicates with two healthy sinks; JetStream should hand each event to one", dup)
	}
	if sentA == 0 || sentB == 0 {
		t.Errorf("one sink did all the work (a %v, b %v)", sentA, sentB)
	}
	h.checkClean()
}

// TestProcessorShutdownNeverAcksUnaccepted stops the sink while OpenMeter
// hangs: Run returns within the grace period, nothing is acknowledged, and
// the events are released at once for the next sink (well before AckWait).
func TestProcessorShutdownNeverAcksUnaccepted(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.om.setAlways(&fakeAction{hang: time.Minute})
	ids := h.publish("shutdown", 30)
	cfg := h.config()
	cfg.RequestTimeout = 10 * time.Second
	cfg.AckWait = time.Minute
	first := h.start(cfg)
	eventually(t, 5*time.Second, "a request in flight", func() bool { return h.om.stats().requests > 0 })
	start := time.Now()
	first.stop()
	if took := time.Since(start); took > cfg.ShutdownGrace+2*time.Second {
		t.Errorf("shutdown took %s", took)
	}
	if st := h.om.stats(); st.raw != 0 {
		t.Fatalf("the hanging stand-in accepted %d events", st.raw)
	}

	h.om.setAlways(nil)
	cfg.Registerer = prometheus.NewRegistry()
	second := h.start(cfg)
	h.waitDelivered(ids, 10*time.Second) // far below AckWait: released, not timed out
	if got := metric(t, first.reg, "kgents_openmeter_events_sent_total", nil); got != 0 {
		t.Errorf("the first sink counted %v events as sent", got)
	}
	eventually(t, 5*time.Second, "backlog 0", func() bool { return second.p.Health().Backlog == 0 })
	h.checkClean()
}

// TestProcessorShutdownHandsBackOnAClosingConnection: a replica stopping
// while OpenMeter is down (its workers in backoff, others waiting on a pull)
// closes its NATS connection right after, as kgentsd does. Its events must
// reach the next processor promptly (they are nak'ed), not after the ack
// wait.
func TestProcessorShutdownHandsBackOnAClosingConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.om.down()
	ids := h.publish("handback", 40)
	cfg := h.config()
	cfg.AckWait = time.Minute
	cfg.FlushInterval = 300 * time.Millisecond

	nc, js := h.ns.Connect(t)
	first, err := NewProcessor(js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	eventually(t, 5*time.Second, "the sink failing", func() bool { return first.Health().LastError != "" })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	nc.Close()

	h.om.up()
	cfg.Registerer = prometheus.NewRegistry()
	h.start(cfg)
	h.waitDelivered(ids, 15*time.Second) // far below AckWait: handed back, not timed out
	h.checkClean()
}

func TestProcessorDisabled(t *testing.T) {
	t.Parallel()
	p, err := NewProcessor(nil, ProcessorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if hl := p.Health(); hl.Status != "disabled" || hl.Configured {
		t.Errorf("health %+v", hl)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestProcessorConfigChecks(t *testing.T) {
	t.Parallel()
	ok := ProcessorConfig{Enabled: true, BaseURL: "https://openmeter.example", APIKey: "k"}
	cases := map[string]func(*ProcessorConfig){
		"backoff reaching the ack wait": func(c *ProcessorConfig) { c.BackoffMax = 2 * time.Minute },
		"request timeout past ack wait": func(c *ProcessorConfig) { c.AckWait = 5 * time.Second },
		"negative batch":                func(c *ProcessorConfig) { c.BatchSize = -1 },
		"tiny ack wait":                 func(c *ProcessorConfig) { c.AckWait = time.Millisecond },
		"bad URL":                       func(c *ProcessorConfig) { c.BaseURL = "openmeter.example" },
		"tiny max ack pending":          func(c *ProcessorConfig) { c.MaxAckPending = 10 },
	}
	_, js := natstest.Start(t).Connect(t)
	for name, mutate := range cases {
		cfg := ok
		mutate(&cfg)
		if _, err := NewProcessor(js, cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewProcessor(js, ok); err != nil {
		t.Errorf("defaults: %v", err)
	}
	if _, err := NewProcessor(nil, ok); err == nil {
		t.Error("an enabled sink without JetStream was accepted")
	}
	// Two processors in one process share their metrics.
	reg := prometheus.NewRegistry()
	ok.Registerer = reg
	for range 2 {
		if _, err := NewProcessor(js, ok); err != nil {
			t.Fatalf("second processor on one registry: %v", err)
		}
	}
}

// TestProcessorRecreatesADeletedConsumer: an operator deletes the consumer;
// the sink creates it again and goes on. The new consumer starts from the
// beginning of the stream, so what was delivered before is sent again: no
// loss, and duplicates that OpenMeter's dedupe absorbs.
func TestProcessorRecreatesADeletedConsumer(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	first := h.publish("deleted", 50)
	h.start(h.config())
	h.waitDelivered(first, 10*time.Second)
	if err := h.js.DeleteConsumer(context.Background(), StreamName, ConsumerName); err != nil {
		t.Fatal(err)
	}
	more := publishEvents(t, h.js, "deleted", 50, 50)
	h.waitDelivered(more, 15*time.Second)
	st := h.om.stats()
	t.Logf("consumer deleted: %d events, %d deliveries, %d duplicates (the stream replayed from its start)", st.unique, st.raw, st.raw-st.unique)
	h.checkClean()
}

func TestProcessorWaitsAreBounded(t *testing.T) {
	t.Parallel()
	p, err := NewProcessor(nil, ProcessorConfig{}) // defaults
	if err != nil {
		t.Fatal(err)
	}
	cfg := p.cfg
	for attempt := range 64 {
		if d := p.backoff(attempt); d < 0 || d > cfg.BackoffMax || d >= cfg.AckWait {
			t.Fatalf("backoff(%d) = %s; want within [0, %s], below the ack wait %s", attempt, d, cfg.BackoffMax, cfg.AckWait)
		}
	}
	if d := p.backoff(0); d > cfg.BackoffBase {
		t.Errorf("first backoff %s exceeds the base %s", d, cfg.BackoffBase)
	}
	long := &IngestError{Kind: KindRateLimited, Status: 429, RetryAfter: time.Hour}
	if d := p.retryWait(long, 0); d < cfg.MaxRetryAfter || d > cfg.MaxRetryAfter*11/10+time.Millisecond {
		t.Errorf("Retry-After of an hour waits %s; want about the cap %s", d, cfg.MaxRetryAfter)
	}
	short := &IngestError{Kind: KindRateLimited, Status: 429, RetryAfter: 2 * time.Second}
	if d := p.retryWait(short, 5); d < 2*time.Second || d > 2200*time.Millisecond {
		t.Errorf("Retry-After 2s waits %s", d)
	}
	none := &IngestError{Kind: KindRateLimited, Status: 429}
	if d := p.retryWait(none, 3); d > cfg.BackoffMax {
		t.Errorf("a 429 without Retry-After waits %s; want the backoff", d)
	}
}

func TestProcessorConfigNeverPrintsTheKey(t *testing.T) {
	t.Parallel()
	cfg := ProcessorConfig{Enabled: true, BaseURL: "https://openmeter.example", APIKey: "om_secret_42"}
	var buf strings.Builder
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("config", "cfg", cfg)
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), buf.String()} {
		if strings.Contains(s, "om_secret_42") || !strings.Contains(s, "openmeter.example") {
			t.Errorf("printed config %q", s)
		}
	}
}
