package streaming

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Tests of the publisher's parts on their own, without NATS: the Flush
// accounting, and the spool with its group commit.

func TestFlushesEpochs(t *testing.T) {
	t.Parallel()
	f := newFlushes()
	a := &rec{durable: make(chan error, 1)}
	a.epoch = f.begin()
	b := &rec{}
	b.epoch = f.begin()
	e, f0 := f.next() // a Flush now waits for a and b only
	if e != a.epoch || e != b.epoch || f0 != 0 {
		t.Fatalf("next() = %d, %d; messages in epoch %d", e, f0, a.epoch)
	}
	later := f.begin()
	if later == e {
		t.Fatal("a message accepted after next() is in the epoch being flushed")
	}

	done, ch, _ := f.drained(e)
	if done {
		t.Fatal("drained with two messages pending")
	}
	f.settle(a, nil, "acked")
	f.settle(a, fmt.Errorf("late"), "error") // a second outcome is ignored
	if err := <-a.durable; err != nil || a.how != "acked" {
		t.Fatalf("a resolved with %v (%s)", err, a.how)
	}
	if done, _, _ := f.drained(e); done {
		t.Fatal("drained with b pending")
	}
	select {
	case <-ch:
		t.Fatal("woke a Flush before its epoch drained")
	default:
	}
	f.settle(b, fmt.Errorf("spool full"), "error")
	select {
	case <-ch:
	default:
		t.Fatal("the last message of a flushed epoch did not wake the Flush")
	}
	done, _, failures := f.drained(e)
	if !done || failures != 1 {
		t.Fatalf("drained(%d) = %v with %d failures, want true with 1", e, done, failures)
	}
	if !f.settled(a) || !f.settled(b) {
		t.Fatal("settled() is false for a resolved rec")
	}
	// The message accepted after the barrier still counts for the next Flush.
	e2, _ := f.next()
	if done, _, _ := f.drained(e2); done {
		t.Fatal("a later epoch drained with a message pending")
	}
	f.done(later, 1, true)
	if done, _, failures := f.drained(e2); !done || failures != 2 || f.failed() != 2 {
		t.Fatalf("after done(): drained %v, failures %d", done, failures)
	}
}

// spoolParts is a spool, its Flush accounting and its group commit, wired
// as NewPublisher wires them.
type spoolParts struct {
	dir    string
	sp     *spoolLog
	fl     *flushes
	commit *groupCommit
	order  sync.Mutex // stands in for Publisher.mu, which appends are made under
}

func newSpoolParts(t *testing.T, segBytes int64) *spoolParts {
	t.Helper()
	dir := t.TempDir()
	met, err := newPubMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	files, rcv, err := openSpool(dir, segBytes, 0, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	wakeCh := make(chan struct{}, 1)
	sp := newSpoolLog(files, rcv, met, wakeCh)
	fl := newFlushes()
	return &spoolParts{dir: dir, sp: sp, fl: fl, commit: newGroupCommit(sp, fl, wakeCh, dir, time.Millisecond, met, quietLog)}
}

// accept spools m as Publish (durable false) or PublishDurable would.
func (s *spoolParts) accept(t *testing.T, m Message, durable bool) *rec {
	s.order.Lock()
	defer s.order.Unlock()
	e := s.fl.begin()
	var r *rec
	if durable {
		r = &rec{m: m, epoch: e, durable: make(chan error, 1)}
	}
	if _, err := s.sp.append(&m, r, e); err != nil {
		t.Errorf("append: %v", err)
	}
	return r
}

// Many producers append, some waiting for durability, while the sync
// goroutine runs and small segments rotate under it: every waiter is
// resolved once, as spooled, a Flush drains, one fsync covers many
// records, and every record is in the spool, in order.
func TestGroupCommitResolvesEveryWaiter(t *testing.T) {
	t.Parallel()
	s := newSpoolParts(t, 4<<10)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { s.commit.run(stop) })

	const producers, each = 8, 200
	var mu sync.Mutex
	var waiters []*rec
	var pw sync.WaitGroup
	for w := range producers {
		pw.Go(func() {
			for i := range each {
				m := Message{Subject: "kgent.session.x.message", MsgID: fmt.Sprintf("w%d-%d", w, i), Data: []byte("payload")}
				if r := s.accept(t, m, i%5 == 0); r != nil {
					mu.Lock()
					waiters = append(waiters, r)
					mu.Unlock()
				}
			}
		})
	}
	pw.Wait()
	for _, r := range waiters {
		select {
		case err := <-r.durable:
			if err != nil || r.how != "spooled" {
				t.Fatalf("%s resolved with %v (%s)", r.m.MsgID, err, r.how)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no fsync within 10s", r.m.MsgID)
		}
	}
	e, _ := s.fl.next()
	deadline := time.Now().Add(10 * time.Second)
	for {
		done, ch, failures := s.fl.drained(e)
		if done {
			if failures != 0 {
				t.Fatalf("%d failures", failures)
			}
			break
		}
		wake(s.commit.now)
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
			t.Fatal("Flush epoch never drained")
		}
	}
	close(stop)
	wg.Wait()
	if n := s.commit.fsyncs.Load(); n == 0 || n >= producers*each {
		t.Fatalf("%d fsyncs for %d records: no group commit", n, producers*each)
	}
	if depth, _, serr := s.sp.stats(); depth != producers*each || serr != "" {
		t.Fatalf("spool depth %d (error %q), want %d", depth, serr, producers*each)
	}
	s.sp.close()

	files, rcv, err := openSpool(s.dir, 4<<10, 0, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	defer files.close()
	if rcv.records != producers*each || len(files.segs) < 2 {
		t.Fatalf("recovered %d records in %d segments, want %d in several", rcv.records, len(files.segs), producers*each)
	}
	if files.nextSeq != producers*each+1 {
		t.Fatalf("next seq %d after %d appends", files.nextSeq, producers*each)
	}
}

// A failed fsync fails the waiters it covers, counts the Publish records
// as lost, and shows in the spool's error before the waiters hear of it.
func TestGroupCommitFsyncFailure(t *testing.T) {
	t.Parallel()
	s := newSpoolParts(t, 1<<20)
	r := s.accept(t, Message{Subject: "a.b", MsgID: "durable", Data: []byte("x")}, true)
	s.accept(t, Message{Subject: "a.b", MsgID: "plain", Data: []byte("y")}, false)
	// Break the active segment under the spool: its fsync fails.
	s.sp.mu.Lock()
	_ = s.sp.files.active.Close()
	s.sp.mu.Unlock()

	s.commit.syncOnce()
	err := <-r.durable
	if err == nil || !strings.Contains(err.Error(), "spool fsync") || r.how != "error" {
		t.Fatalf("waiter got %v (%s), want a spool fsync error", err, r.how)
	}
	if _, _, serr := s.sp.stats(); !strings.Contains(serr, "spool fsync") {
		t.Fatalf("spool error = %q", serr)
	}
	if n := s.fl.failed(); n != 2 {
		t.Fatalf("failures = %d, want 2", n)
	}
	if n := metricValue(s.commit.met.spoolErrs); n != 1 {
		t.Fatalf("spool errors metric = %v", n)
	}
	s.sp.mu.Lock()
	s.sp.files.active = nil // closed above
	s.sp.mu.Unlock()
	s.sp.close()
}

// The replay position moves record by record; the spool is deleted only
// once nothing is left after the head, and then hands back the batch still
// waiting for its fsync.
func TestSpoolLogAdvanceAndReset(t *testing.T) {
	t.Parallel()
	s := newSpoolParts(t, 1<<20)
	defer s.sp.close()
	var seqs []uint64
	for i := range 3 {
		m := Message{Subject: "a.b", MsgID: fmt.Sprint(i), Data: []byte("z")}
		s.order.Lock()
		seq, err := s.sp.append(&m, nil, s.fl.begin())
		s.order.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	s.sp.markAcked(seqs[2])
	if !s.sp.acked(seqs[2]) || s.sp.acked(seqs[1]) {
		t.Fatal("markAcked/acked disagree")
	}

	// Advance past the first two, as the replay does after their acks.
	recLen := int64(len(encodeRecord(nil, 1, 0, &Message{Subject: "a.b", MsgID: "0", Data: []byte("z")})))
	end := func(i int) spoolPos { return spoolPos{idx: 1, off: segHeaderLen + int64(i+1)*recLen} }
	for i := range 2 {
		s.sp.advance(seqs[i], end(i))
	}
	if s.sp.position() != end(1) {
		t.Fatalf("head %+v, want %+v", s.sp.position(), end(1))
	}
	if depth, _, _ := s.sp.stats(); depth != 1 {
		t.Fatalf("depth %d after advancing past 2 of 3", depth)
	}
	if _, ok := s.sp.resetIfDrained(); ok {
		t.Fatal("reset with a record left after the head")
	}
	s.sp.advance(seqs[2], end(2))
	if s.sp.acked(seqs[2]) {
		t.Fatal("skip entry kept after the head moved past it")
	}
	b, ok := s.sp.resetIfDrained()
	if !ok || len(b.counts) != 1 || b.counts[0].n != 3 {
		t.Fatalf("resetIfDrained = %+v, %v; want the unsynced batch of 3", b, ok)
	}
	if depth, bytes, _ := s.sp.stats(); depth != 0 || bytes != 0 || s.sp.position() != (spoolPos{}) {
		t.Fatalf("after reset: depth %d, bytes %d, head %+v", depth, bytes, s.sp.position())
	}
}
