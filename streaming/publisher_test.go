package streaming

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kgents/kgents-go/streaming/natstest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const testStream = "kgent-events"

var quietLog = slog.New(slog.DiscardHandler)

func testConnect(t testing.TB, srv *natstest.Server) *Conn {
	t.Helper()
	c, err := Connect(context.Background(), Options{
		Enabled:        true,
		Servers:        []string{srv.URL()},
		ConnectTimeout: 200 * time.Millisecond,
		Name:           "publisher-test",
		Logger:         quietLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	return c
}

func createStream(t testing.TB, js jetstream.JetStream, subjects ...string) {
	t.Helper()
	if len(subjects) == 0 {
		subjects = []string{"kgent.session.>"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:     testStream,
		Subjects: subjects,
		Storage:  jetstream.FileStorage,
	}); err != nil {
		t.Fatal(err)
	}
}

type testPub struct {
	*Publisher
	reg *prometheus.Registry
	dir string
}

func newTestPub(t testing.TB, c *Conn, dir string, mod func(*PublisherOptions)) *testPub {
	t.Helper()
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "spool")
	}
	reg := prometheus.NewRegistry()
	o := PublisherOptions{
		SpoolDir:     dir,
		AckTimeout:   2 * time.Second,
		BreakerOpen:  300 * time.Millisecond,
		Logger:       quietLog,
		Registerer:   reg,
		SyncInterval: 2 * time.Millisecond,
	}
	if mod != nil {
		mod(&o)
	}
	p, err := NewPublisher(c, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return &testPub{Publisher: p, reg: reg, dir: dir}
}

func msg(subject, id string) Message {
	return Message{Subject: subject, MsgID: id, Data: []byte(`{"id":"` + id + `"}`)}
}

func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func flush(t testing.TB, p *Publisher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

type stored struct {
	seq     uint64
	subject string
	id      string
}

// streamContents reads every message of the test stream, in stream order.
func streamContents(t testing.TB, js jetstream.JetStream) []stored {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, testStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []stored
	for uint64(len(out)) < info.State.Msgs {
		batch, err := cons.Fetch(min(1000, int(info.State.Msgs)-len(out)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, stored{seq: md.Sequence.Stream, subject: m.Subject(), id: m.Headers().Get(jetstream.MsgIDHeader)})
			got++
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
		if got == 0 {
			t.Fatalf("read %d of %d messages", len(out), info.State.Msgs)
		}
	}
	return out
}

// checkExactlyOnceInOrder asserts the stream holds exactly want, in order.
func checkExactlyOnceInOrder(t testing.TB, got []stored, want []string) {
	t.Helper()
	ids := make([]string, len(got))
	seen := map[string]int{}
	for i, s := range got {
		ids[i] = s.id
		seen[s.id]++
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("msg id %s stored %d times", id, n)
		}
	}
	if len(ids) != len(want) {
		missing := 0
		for _, w := range want {
			if seen[w] == 0 {
				missing++
			}
		}
		t.Fatalf("stream holds %d messages, want %d (%d missing)", len(ids), len(want), missing)
	}
	for i := range want {
		if ids[i] != want[i] {
			t.Fatalf("stream order differs at %d: got %s, want %s (around: %v)", i, ids[i], want[i], ids[max(0, i-3):min(len(ids), i+4)])
		}
	}
}

func TestPublisherHappyPath(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", nil)

	const n = 3000
	want := make([]string, n)
	for i := range n {
		id := fmt.Sprintf("m-%06d", i)
		want[i] = id
		m := msg(fmt.Sprintf("kgent.session.s%d.message", i%7), id)
		if i%100 == 0 {
			if err := p.PublishDurable(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			continue
		}
		p.Publish(m)
	}
	flush(t, p.Publisher)
	checkExactlyOnceInOrder(t, streamContents(t, js), want)

	h := p.Health()
	if h.State != PublisherHealthy || h.Mode != ModeJetStream || h.SpoolDepth != 0 || h.Breaker.State != "closed" {
		t.Fatalf("health = %+v", h)
	}
	if got := metricValue(p.met.published.WithLabelValues("session")); got != n {
		t.Fatalf("published_total{session} = %v, want %d", got, n)
	}
	if got := metricValue(p.met.errors); got != 0 {
		t.Fatalf("publish errors = %v", got)
	}

	// Re-publishing the same ids is deduplicated by JetStream.
	for i := range 50 {
		p.Publish(msg("kgent.session.s0.message", want[i]))
	}
	flush(t, p.Publisher)
	if got := len(streamContents(t, js)); got != n {
		t.Fatalf("after duplicates the stream holds %d, want %d", got, n)
	}
	if got := metricValue(p.met.duplicates); got != 50 {
		t.Fatalf("duplicates = %v, want 50", got)
	}
	// Metric names as the dashboards expect them.
	names := map[string]bool{}
	mfs, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, name := range []string{"kgents_nats_messages_published_total", "kgents_nats_publish_errors_total",
		"kgents_nats_circuit_state", "kgents_nats_fallback_queue_depth", "kgents_nats_spool_bytes", "kgents_nats_spool_replayed_total"} {
		if !names[name] {
			t.Errorf("metric %s not registered", name)
		}
	}
}

// TestPublisherOutageSpoolAndReplay stops NATS while a producer keeps
// publishing, then restarts it: everything ends in the stream exactly once
// and in publish order.
func TestPublisherOutageSpoolAndReplay(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", nil)

	var (
		mu   sync.Mutex
		want []string
		next int
	)
	publish := func(k int, durable bool) {
		for range k {
			mu.Lock()
			id := fmt.Sprintf("o-%06d", next)
			subject := fmt.Sprintf("kgent.session.s%d.chunk", next%5)
			next++
			want = append(want, id)
			if durable {
				// PublishDurable under the lock keeps want in publish order.
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				err := p.PublishDurable(ctx, msg(subject, id))
				cancel()
				mu.Unlock()
				if err != nil {
					t.Errorf("PublishDurable: %v", err)
				}
				continue
			}
			p.Publish(msg(subject, id))
			mu.Unlock()
		}
	}

	// A producer keeps going across the outage (messages in flight at the stop).
	stopProducer := make(chan struct{})
	producerDone := make(chan struct{})
	go func() {
		defer close(producerDone)
		for {
			select {
			case <-stopProducer:
				return
			default:
			}
			publish(20, false)
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(150 * time.Millisecond)
	srv.Stop()
	eventually(t, 5*time.Second, "health disconnected", func() bool { return p.Health().State == PublisherDisconnected })
	time.Sleep(100 * time.Millisecond)
	close(stopProducer)
	<-producerDone

	// While NATS is down, PublishDurable returns once fsynced.
	start := time.Now()
	publish(20, true)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("20 PublishDurable while disconnected took %s", d)
	}
	publish(300, false)
	flush(t, p.Publisher)

	h := p.Health()
	if h.State != PublisherDisconnected || h.Mode != ModeFallback || h.SpoolDepth < 320 || h.SpoolBytes <= 0 {
		t.Fatalf("health during the outage = %+v", h)
	}
	if got := metricValue(p.met.depth); got != float64(h.SpoolDepth) {
		t.Fatalf("fallback_queue_depth = %v, health says %d", got, h.SpoolDepth)
	}
	if got := metricValue(p.met.bytes); got <= 0 {
		t.Fatalf("spool_bytes = %v", got)
	}

	srv.Restart()
	eventually(t, 20*time.Second, "spool drained and healthy", func() bool {
		h := p.Health()
		return h.State == PublisherHealthy && h.Mode == ModeJetStream && h.SpoolDepth == 0
	})
	flush(t, p.Publisher)
	got := streamContents(t, js)
	mu.Lock()
	checkExactlyOnceInOrder(t, got, want)
	mu.Unlock()
	// Per subject order follows from the global order; check it explicitly too.
	last := map[string]uint64{}
	for _, s := range got {
		if s.seq <= last[s.subject] {
			t.Fatalf("subject %s out of order", s.subject)
		}
		last[s.subject] = s.seq
	}
	if r := metricValue(p.met.replayed); r < 320 {
		t.Fatalf("replayed_total = %v, want ≥ 320", r)
	}
	if g := metricValue(p.met.depth); g != 0 {
		t.Fatalf("fallback_queue_depth after replay = %v", g)
	}
	if segs, _ := filepath.Glob(filepath.Join(p.dir, "*.seg")); len(segs) != 0 {
		t.Fatalf("spool segments left after drain: %v", segs)
	}
	// Direct publishing again.
	p.Publish(msg("kgent.session.after.message", "after-1"))
	flush(t, p.Publisher)
	if h := p.Health(); h.Mode != ModeJetStream || h.SpoolDepth != 0 {
		t.Fatalf("health after = %+v", h)
	}
}

// A replay cut short by a second outage resumes where it stopped.
func TestPublisherReplayInterruptedByOutage(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	srv.Stop()
	c := testConnect(t, srv)
	// A tiny window makes the replay slow enough to interrupt.
	p := newTestPub(t, c, "", func(o *PublisherOptions) { o.MaxInFlight = 1 })
	const n = 6000
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprintf("i-%05d", i)
		p.Publish(msg(fmt.Sprintf("kgent.session.i%d.chunk", i%4), want[i]))
	}
	flush(t, p.Publisher)

	srv.Restart()
	eventually(t, 10*time.Second, "replay under way", func() bool { return metricValue(p.met.replayed) >= 100 })
	srv.Stop()
	eventually(t, 5*time.Second, "disconnected", func() bool { return p.Health().State == PublisherDisconnected })
	stoppedAt := metricValue(p.met.replayed)
	depth := p.Health().SpoolDepth
	if stoppedAt >= n || depth == 0 || depth > n-100 {
		t.Fatalf("replay not interrupted: replayed %v, depth %d", stoppedAt, depth)
	}
	// New messages still queue behind the backlog.
	for i := range 10 {
		id := fmt.Sprintf("j-%d", i)
		want = append(want, id)
		p.Publish(msg("kgent.session.j.chunk", id))
	}

	srv.Restart()
	eventually(t, 40*time.Second, "drained", func() bool {
		h := p.Health()
		return h.State == PublisherHealthy && h.SpoolDepth == 0 && h.Mode == ModeJetStream
	})
	checkExactlyOnceInOrder(t, streamContents(t, js), want)
}

// recordTransitions captures every breaker state change.
func recordTransitions(p *Publisher) func() []string {
	var mu sync.Mutex
	var seen []string
	p.br.mu.Lock()
	orig := p.br.onChange
	p.br.onChange = func(from, to breakerState) {
		mu.Lock()
		seen = append(seen, stateName(from)+">"+stateName(to))
		mu.Unlock()
		orig(from, to)
	}
	p.br.mu.Unlock()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

func containsSeq(got []string, want ...string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestPublisherBreaker(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", func(o *PublisherOptions) { o.BreakerOpen = 400 * time.Millisecond })
	transitions := recordTransitions(p.Publisher)

	for i := range 20 {
		p.Publish(msg("kgent.session.b.message", fmt.Sprintf("ok-%d", i)))
	}
	flush(t, p.Publisher)

	// No stream any more: JetStream answers "no responders" (after nats.go's
	// two retries) and every publish fails while connected.
	if err := js.DeleteStream(context.Background(), testStream); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 10 {
		id := fmt.Sprintf("b-%d", i)
		want = append(want, id)
		p.Publish(msg("kgent.session.b.message", id))
	}
	eventually(t, 10*time.Second, "breaker open", func() bool { return p.Health().State == PublisherCircuitOpen })
	h := p.Health()
	if h.Mode != ModeFallback || h.Breaker.State != "open" || h.Breaker.FailureThreshold != 5 || h.Breaker.LastFailure == nil {
		t.Fatalf("health with the breaker open = %+v", h)
	}
	if got := metricValue(p.met.circuit); got != 1 {
		t.Fatalf("circuit_state = %v, want 1", got)
	}
	if got := metricValue(p.met.errors); got < 5 {
		t.Fatalf("publish errors = %v, want ≥ 5", got)
	}
	flush(t, p.Publisher)
	eventually(t, 5*time.Second, "all 10 spooled", func() bool { return p.Health().SpoolDepth == 10 })
	// While open, new messages go to the spool without trying JetStream.
	errsBefore := metricValue(p.met.errors)
	for i := 10; i < 15; i++ {
		id := fmt.Sprintf("b-%d", i)
		want = append(want, id)
		p.Publish(msg("kgent.session.b.message", id))
	}
	flush(t, p.Publisher)
	if h := p.Health(); h.SpoolDepth != 15 {
		t.Fatalf("spool depth = %d, want 15", h.SpoolDepth)
	}

	// After the open period: half-open, the probe fails (still no stream), open again.
	eventually(t, 10*time.Second, "a failed probe", func() bool {
		return containsSeq(transitions(), "closed>open", "open>half_open", "half_open>open")
	})
	if got := metricValue(p.met.errors); got <= errsBefore {
		t.Fatalf("the half-open probe did not count as an error")
	}

	// The stream is back: the next probes succeed and close the breaker.
	createStream(t, js)
	eventually(t, 10*time.Second, "breaker closed and spool drained", func() bool {
		h := p.Health()
		return h.State == PublisherHealthy && h.Mode == ModeJetStream && h.SpoolDepth == 0 && h.Breaker.State == "closed"
	})
	if !containsSeq(transitions(), "closed>open", "open>half_open", "half_open>closed") {
		t.Fatalf("transitions = %v", transitions())
	}
	if got := metricValue(p.met.circuit); got != 0 {
		t.Fatalf("circuit_state = %v, want 0", got)
	}
	checkExactlyOnceInOrder(t, streamContents(t, js), want)
}

func TestPublisherReconnectMovesBreakerToHalfOpen(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	c := testConnect(t, srv)
	// Open for a minute: only the reconnect can move it on within the test.
	p := newTestPub(t, c, "", func(o *PublisherOptions) { o.BreakerOpen = time.Minute })
	transitions := recordTransitions(p.Publisher)

	if err := js.DeleteStream(context.Background(), testStream); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 8 {
		id := fmt.Sprintf("r-%d", i)
		want = append(want, id)
		p.Publish(msg("kgent.session.r.message", id))
	}
	eventually(t, 10*time.Second, "breaker open", func() bool { return p.Health().Breaker.State == "open" })
	createStream(t, js)
	time.Sleep(200 * time.Millisecond)
	if p.Health().Breaker.State != "open" {
		t.Fatal("breaker left open state without a reconnect")
	}

	srv.Restart()
	eventually(t, 10*time.Second, "half-open after reconnect, then closed", func() bool {
		return containsSeq(transitions(), "closed>open", "open>half_open", "half_open>closed")
	})
	eventually(t, 10*time.Second, "spool drained", func() bool {
		h := p.Health()
		return h.State == PublisherHealthy && h.SpoolDepth == 0
	})
	checkExactlyOnceInOrder(t, streamContents(t, js), want)

	// A reconnect while closed also starts with probes (half-open).
	srv.Restart()
	eventually(t, 10*time.Second, "half-open after a second reconnect", func() bool {
		tr := transitions()
		return len(tr) > 0 && slices.Contains(tr[2:], "closed>half_open")
	})
}

// crash stops a publisher like a killed process would: no final fsync, no
// checkpoint, files just closed.
func (p *Publisher) crash() {
	p.mu.Lock()
	p.closed, p.stopped = true, true
	p.mu.Unlock()
	p.closeOnce.Do(func() {})
	p.halt()
	p.wg.Wait()
	p.mu.Lock()
	p.replay.reader.closeFile()
	p.sp.close()
	p.mu.Unlock()
	p.nc.Close()
}

func TestPublisherCrashRecovery(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	srv.Stop()

	c := testConnect(t, srv)
	if c.Connected() {
		t.Fatal("connected to a stopped server")
	}
	dir := filepath.Join(t.TempDir(), "spool")
	p1 := newTestPub(t, c, dir, func(o *PublisherOptions) { o.SpoolSegmentBytes = 4 << 10 })
	const n = 400
	var want []string
	for i := range n {
		id := fmt.Sprintf("c-%04d", i)
		want = append(want, id)
		m := msg(fmt.Sprintf("kgent.session.c%d.message", i%3), id)
		m.Header = map[string]string{"Kgents-Tenant": "t1"}
		p1.Publish(m)
	}
	flush(t, p1.Publisher)
	if h := p1.Health(); h.SpoolDepth != n || h.State != PublisherDisconnected {
		t.Fatalf("health = %+v", h)
	}
	p1.crash()

	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) < 2 {
		t.Fatalf("expected several segments, got %v", segs)
	}
	slices.Sort(segs)
	lastSeg := segs[len(segs)-1]
	// A torn record (a crash in the middle of a write) ...
	torn := encodeRecord(nil, 99999, 0, &Message{Subject: "kgent.session.c0.message", MsgID: "torn", Data: []byte("torn record")})
	f, err := os.OpenFile(lastSeg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(torn[:len(torn)-5]); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	// ... and plain garbage at the end of an earlier segment.
	f, err = os.OpenFile(segs[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte("\xff\xff\x00\x01garbage that is not a record"))
	_ = f.Close()

	srv.Restart()
	c2 := testConnect(t, srv)
	eventually(t, 5*time.Second, "connected", c2.Connected)
	p2 := newTestPub(t, c2, dir, nil)
	eventually(t, 20*time.Second, "recovered spool replayed", func() bool {
		h := p2.Health()
		return h.State == PublisherHealthy && h.SpoolDepth == 0 && h.Mode == ModeJetStream
	})
	got := streamContents(t, js)
	checkExactlyOnceInOrder(t, got, want)
	if r := metricValue(p2.met.replayed); r != n {
		t.Fatalf("replayed = %v, want %d", r, n)
	}
	// Headers survive the spool.
	s, _ := js.Stream(context.Background(), testStream)
	m, err := s.GetMsg(context.Background(), got[0].seq)
	if err != nil || m.Header.Get("Kgents-Tenant") != "t1" {
		t.Fatalf("header lost: %v %v", m, err)
	}
}

// A publisher closed during an outage leaves a fsynced spool behind that
// the next start replays (the shutdown-while-disconnected case).
func TestPublisherCloseDuringOutageThenRestart(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	c := testConnect(t, srv)
	dir := filepath.Join(t.TempDir(), "spool")
	p1 := newTestPub(t, c, dir, nil)
	var want []string
	for i := range 50 {
		id := fmt.Sprintf("pre-%d", i)
		want = append(want, id)
		p1.Publish(msg("kgent.session.x.message", id))
	}
	flush(t, p1.Publisher)
	srv.Stop()
	eventually(t, 5*time.Second, "disconnected", func() bool { return !c.Connected() })
	for i := range 100 {
		id := fmt.Sprintf("during-%d", i)
		want = append(want, id)
		p1.Publish(msg("kgent.session.x.message", id))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := p1.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := p1.PublishDurable(context.Background(), msg("kgent.session.x.message", "late")); !errors.Is(err, ErrPublisherClosed) {
		t.Fatalf("PublishDurable after Close = %v", err)
	}
	p1.Publish(msg("kgent.session.x.message", "late2"))
	if got := metricValue(p1.met.dropped.WithLabelValues(dropClosed)); got != 2 {
		t.Fatalf("dropped{closed} = %v", got)
	}
	if err := p1.Close(ctx); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, headFile)); err != nil {
		t.Fatalf("no replay checkpoint after close: %v", err)
	}

	srv.Restart()
	c2 := testConnect(t, srv)
	eventually(t, 5*time.Second, "connected", c2.Connected)
	p2 := newTestPub(t, c2, dir, nil)
	eventually(t, 20*time.Second, "replayed", func() bool {
		h := p2.Health()
		return h.State == PublisherHealthy && h.SpoolDepth == 0 && h.Mode == ModeJetStream
	})
	checkExactlyOnceInOrder(t, streamContents(t, js), want)
	if err := p2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if segs, _ := filepath.Glob(filepath.Join(dir, "*.seg")); len(segs) != 0 {
		t.Fatalf("segments left after a clean close: %v", segs)
	}
}

// Many goroutines publish concurrently through overflow (tiny queue and
// window), an outage and the replay; each goroutine's messages must be
// stored exactly once and in its own order.
func TestPublisherConcurrentOrder(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", func(o *PublisherOptions) {
		o.QueueSize = 64
		o.MaxInFlight = 16
	})

	const workers, each = 12, 400
	var wg sync.WaitGroup
	outage := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if i == each/2 && w == 0 {
					close(outage)
				}
				m := msg(fmt.Sprintf("kgent.session.w%d.message", w), fmt.Sprintf("w%02d-%05d", w, i))
				if i%50 == 0 {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					if err := p.PublishDurable(ctx, m); err != nil {
						t.Errorf("PublishDurable: %v", err)
					}
					cancel()
				} else {
					p.Publish(m)
				}
				if i%40 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	<-outage
	srv.Stop()
	time.Sleep(300 * time.Millisecond)
	srv.Restart()
	wg.Wait()
	eventually(t, 30*time.Second, "all stored", func() bool {
		h := p.Health()
		return h.State == PublisherHealthy && h.SpoolDepth == 0 && h.Mode == ModeJetStream && h.Queued == 0
	})
	flush(t, p.Publisher)

	got := streamContents(t, js)
	if len(got) != workers*each {
		t.Fatalf("stream holds %d, want %d", len(got), workers*each)
	}
	next := make([]int, workers)
	for _, s := range got {
		var w, i int
		if _, err := fmt.Sscanf(s.id, "w%02d-%05d", &w, &i); err != nil {
			t.Fatalf("bad id %q", s.id)
		}
		if i != next[w] {
			t.Fatalf("worker %d: got message %d, want %d (stored out of order or twice)", w, i, next[w])
		}
		next[w]++
	}
}

func TestPublisherFlushAndDurableWhileConnected(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", nil)

	// Flush with nothing published returns at once.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// PublishDurable returns after the ack: the message is readable.
	if err := p.PublishDurable(ctx, msg("kgent.session.f.message", "f-1")); err != nil {
		t.Fatal(err)
	}
	if got := streamContents(t, js); len(got) != 1 || got[0].id != "f-1" {
		t.Fatalf("stream = %v", got)
	}
	// A context already cancelled returns its error and publishes nothing.
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if err := p.PublishDurable(cctx, msg("kgent.session.f.message", "f-2")); !errors.Is(err, context.Canceled) {
		t.Fatalf("PublishDurable with a cancelled ctx = %v", err)
	}
	// Invalid messages.
	for _, m := range []Message{
		{Subject: "kgent.session.f.message", Data: []byte("x")},
		{MsgID: "x"},
		{Subject: "kgent.session.*", MsgID: "x"},
		{Subject: "a.b", MsgID: "x", Header: map[string]string{"Nats-Msg-Id": "y"}},
	} {
		if err := p.PublishDurable(ctx, m); !errors.Is(err, ErrInvalidMessage) {
			t.Fatalf("PublishDurable(%+v) = %v, want ErrInvalidMessage", m, err)
		}
	}
	p.Publish(Message{Subject: "kgent.session.f.message"})
	if got := metricValue(p.met.dropped.WithLabelValues(dropInvalid)); got != 5 {
		t.Fatalf("dropped{invalid} = %v, want 5", got)
	}
	flush(t, p.Publisher)
}

// A message JetStream refuses for good (a failed compare-and-set) is
// returned to a durable caller as ErrRejected (the caller owns it: not kept,
// not counted as dropped); one nobody waits for is kept in rejected.seg and
// counted. Neither counts for the breaker nor blocks the messages behind it.
func TestPublisherRejectedMessage(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", nil)

	for i := range 6 {
		m := msg("kgent.session.cas.message", fmt.Sprintf("cas-%d", i))
		m.Header = map[string]string{jetstream.ExpectedLastSubjSeqHeader: "999"}
		err := p.PublishDurable(context.Background(), m)
		if !errors.Is(err, ErrRejected) {
			t.Fatalf("PublishDurable with a wrong expected sequence = %v, want ErrRejected", err)
		}
	}
	if h := p.Health(); h.Breaker.State != "closed" || h.Breaker.Failures != 0 {
		t.Fatalf("a rejection counted for the breaker: %+v", h.Breaker)
	}
	if got := metricValue(p.met.dropped.WithLabelValues(dropRejected)); got != 0 {
		t.Fatalf("dropped{rejected} = %v after refusals returned to their callers", got)
	}
	if _, err := os.Stat(filepath.Join(p.dir, rejectedFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("rejected.seg holds refusals returned to their callers: %v", err)
	}
	m := msg("kgent.session.cas.message", "fire-and-forget")
	m.Header = map[string]string{jetstream.ExpectedLastSubjSeqHeader: "999"}
	p.Publish(m)
	if err := p.PublishDurable(context.Background(), msg("kgent.session.cas.message", "after")); err != nil {
		t.Fatal(err)
	}
	if got := streamContents(t, js); len(got) != 1 || got[0].id != "after" {
		t.Fatalf("stream = %v", got)
	}
	if st, err := os.Stat(filepath.Join(p.dir, rejectedFile)); err != nil || st.Size() <= segHeaderLen {
		t.Fatalf("rejected.seg: %v", err)
	}
	if got := metricValue(p.met.dropped.WithLabelValues(dropRejected)); got != 1 {
		t.Fatalf("dropped{rejected} = %v, want the fire-and-forget one", got)
	}
}

func TestPublisherSpoolFull(t *testing.T) {
	srv := natstest.Start(t)
	srv.Stop()
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", func(o *PublisherOptions) { o.SpoolMaxBytes = 4 << 10 })
	var fullErr error
	for i := range 200 {
		err := p.PublishDurable(context.Background(), msg("kgent.session.full.message", fmt.Sprintf("full-%d", i)))
		if err != nil {
			fullErr = err
			break
		}
	}
	if !errors.Is(fullErr, ErrSpoolFull) {
		t.Fatalf("PublishDurable on a full spool = %v, want ErrSpoolFull", fullErr)
	}
	p.Publish(msg("kgent.session.full.message", "ff"))
	if got := metricValue(p.met.dropped.WithLabelValues(dropSpool)); got < 2 {
		t.Fatalf("dropped{spool_error} = %v", got)
	}
	if got := metricValue(p.met.spoolErrs); got < 2 {
		t.Fatalf("spool errors = %v", got)
	}
	if h := p.Health(); h.SpoolError == "" || h.Dropped < 2 {
		t.Fatalf("health = %+v", h)
	}
	// The losses were reported when they happened; a later Flush has nothing to wait for.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("flush = %v", err)
	}
}

func TestPublisherDisabled(t *testing.T) {
	c, err := Connect(context.Background(), Options{Enabled: false})
	if err != nil {
		t.Fatal(err)
	}
	for _, conn := range []*Conn{c, nil} {
		p, err := NewPublisher(conn, PublisherOptions{Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		p.Publish(msg("kgent.session.d.message", "d"))
		if err := p.PublishDurable(context.Background(), msg("kgent.session.d.message", "d")); err != nil {
			t.Fatal(err)
		}
		if err := p.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		if h := p.Health(); h.State != PublisherDisabled || h.Mode != ModeFallback {
			t.Fatalf("health = %+v", h)
		}
		if err := p.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPublisherOnStateChange(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", nil)
	var mu sync.Mutex
	var states []string
	p.OnStateChange(func(h PublisherHealth) {
		mu.Lock()
		states = append(states, h.State+"/"+h.Mode)
		mu.Unlock()
	})
	// Under load the first connect can time out and the publisher start
	// disconnected; the change to observe is healthy → disconnected.
	eventually(t, 10*time.Second, "healthy before the outage", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return p.Health().State == PublisherHealthy && (len(states) == 0 || states[len(states)-1] == "healthy/jetstream")
	})
	mu.Lock()
	before := len(states) // only what is reported from now on counts
	mu.Unlock()
	srv.Stop()
	eventually(t, 5*time.Second, "disconnected reported", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(states[before:], "disconnected/fallback")
	})
	mu.Lock()
	before = len(states)
	mu.Unlock()
	srv.Restart()
	eventually(t, 10*time.Second, "healthy reported", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) > before && states[len(states)-1] == "healthy/jetstream"
	})
}

func TestPublisherSpoolDirInUse(t *testing.T) {
	srv := natstest.Start(t)
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", nil)
	if _, err := NewPublisher(c, PublisherOptions{SpoolDir: p.dir, Registerer: prometheus.NewRegistry(), Logger: quietLog}); err == nil {
		t.Fatal("a second publisher opened a spool in use")
	}
	st, err := os.Stat(p.dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("spool dir mode = %v (%v), want 0700", st.Mode().Perm(), err)
	}
}

func TestSubjectType(t *testing.T) {
	for subject, want := range map[string]string{
		"kgent.session.3f2a-uuid.message": "session",
		"kgent.metering.api_request":      "metering",
		"kgent.transcript.abc123":         "transcript",
		"$KV.sessions.abc":                "kv",
		"$JS.API.STREAM.INFO":             "system",
		"kgent.0a1b2c3d.x":                "other",
		"single":                          "other",
	} {
		if got := subjectType(subject); got != want {
			t.Errorf("subjectType(%q) = %q, want %q", subject, got, want)
		}
	}
}

// metricValue reads a counter or gauge (summed over its series).
func metricValue(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	var sum float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			panic(err)
		}
		sum += d.GetCounter().GetValue() + d.GetGauge().GetValue()
	}
	return sum
}

// A write-once message (expected last subject sequence 0) stored by its
// first publish, whose copy was spooled anyway (its ack lost in an outage),
// is recognised on replay as already stored: not a rejection, not in
// rejected.seg. A different message under the same subject still is.
func TestReplayOfAWriteOnceMessageAlreadyStored(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: "kgent-transcripts", Subjects: []string{"kgent.transcript.>"}, Storage: jetstream.FileStorage, AllowDirect: true,
		Duplicates: 10 * time.Minute,
	}); err != nil {
		t.Fatal(err)
	}
	once := func(subject, id string) Message {
		return Message{Subject: subject, Data: []byte(`{}`), MsgID: id, Header: map[string]string{"Nats-Expected-Last-Subject-Sequence": "0"}}
	}
	stored := once("kgent.transcript.t.s.0", "m0")
	other := once("kgent.transcript.t.s.1", "m1-late")
	for _, m := range []Message{stored, once("kgent.transcript.t.s.1", "m1")} {
		if _, err := js.PublishMsg(ctx, m.natsMsg()); err != nil {
			t.Fatal(err)
		}
	}
	c := testConnect(t, srv)
	p := newTestPub(t, c, "", nil)
	srv.Stop()
	for _, m := range []Message{stored, other} {
		if err := p.PublishDurable(ctx, m); err != nil {
			t.Fatalf("spooling %s: %v", m.MsgID, err)
		}
	}
	srv.Restart()
	eventually(t, 15*time.Second, "the spool replayed", func() bool { return p.Health().SpoolDepth == 0 })
	if got := metricValue(p.met.dropped.WithLabelValues(dropRejected)); got != 1 {
		t.Fatalf("dropped{rejected} = %v, want 1 (the different message only)", got)
	}
}

// TestPublisherCloseEndsAResolve: a Resolve the replay is waiting on ends
// when the publisher closes (not at ResolveTimeout), and the message it was
// settling stays in the spool for the next start.
func TestPublisherCloseEndsAResolve(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	createStream(t, js)
	srv.Stop()
	dir := filepath.Join(t.TempDir(), "spool")
	entered := make(chan struct{})
	var once sync.Once
	p := newTestPub(t, testConnect(t, srv), dir, func(o *PublisherOptions) {
		o.Resolve = func(ctx context.Context, m *Message, refused error) error {
			once.Do(func() { close(entered) })
			<-ctx.Done()
			return ctx.Err()
		}
	})
	m := msg("kgent.session.cas.message", "to-settle")
	m.Header = map[string]string{jetstream.ExpectedLastSubjSeqHeader: "999"}
	p.Publish(m)
	srv.Restart()
	select {
	case <-entered:
	case <-time.After(15 * time.Second):
		t.Fatal("the replay never asked Resolve to settle the refused message")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = p.Close(ctx)
	if el := time.Since(start); el > ResolveTimeout/2 {
		t.Fatalf("Close took %v: it waited for the Resolve's own timeout", el)
	}

	settled := make(chan string, 1)
	newTestPub(t, testConnect(t, srv), dir, func(o *PublisherOptions) {
		o.Resolve = func(ctx context.Context, m *Message, refused error) error {
			settled <- m.MsgID
			return nil
		}
	})
	select {
	case id := <-settled:
		if id != "to-settle" {
			t.Fatalf("the next start settled %q", id)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the message being settled at Close was not in the spool at the next start")
	}
}
