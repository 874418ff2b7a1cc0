package streaming

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Flush accounting. Every accepted message is counted in the Flush epoch
// that is current when it is accepted, until it is resolved: acknowledged by
// JetStream, fsynced in the spool, or lost. Flush opens a new epoch and
// waits until no earlier one has a message pending.

// flushes owns the epochs and the resolution of every accepted message.
// Resolution and counting are one step under mu, so a message is counted
// done exactly once whichever of its outcomes (direct ack, fsync of its
// spool copy, failure) comes first. mu is the innermost publisher lock: no
// method calls out while holding it.
type flushes struct {
	mu         sync.Mutex
	epoch      uint64         // the current epoch; Flush moves it on
	pending    map[uint64]int // epoch → accepted messages not yet resolved
	resolvedCh chan struct{}  // closed, and replaced, when an epoch before the current one drains
	failures   uint64         // accepted messages that ended neither acked nor durably spooled
}

func newFlushes() *flushes {
	return &flushes{pending: map[uint64]int{}, resolvedCh: make(chan struct{})}
}

// begin counts a newly accepted message and returns its epoch.
func (f *flushes) begin() uint64 {
	f.mu.Lock()
	e := f.epoch
	f.pending[e]++
	f.mu.Unlock()
	return e
}

// settle resolves r once: acknowledged, durably spooled, or failed (err
// not nil). Later calls for r do nothing.
func (f *flushes) settle(r *rec, err error, how string) {
	f.mu.Lock()
	f.settleLocked(r, err, how)
	f.mu.Unlock()
}

func (f *flushes) settleLocked(r *rec, err error, how string) {
	if r.resolved {
		return
	}
	r.resolved = true
	r.how = how
	if err != nil {
		f.failures++
	}
	f.doneLocked(r.epoch, 1)
	if r.durable != nil {
		r.durable <- err // buffered, and sent once: never blocks
	}
}

// settled reports whether r has been resolved.
func (f *flushes) settled(r *rec) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return r.resolved
}

// done resolves n messages of epoch that have no rec (Publish calls
// counted in a group-commit batch); failed counts them as lost.
func (f *flushes) done(epoch uint64, n int, failed bool) {
	f.mu.Lock()
	if failed {
		f.failures += uint64(n)
	}
	f.doneLocked(epoch, n)
	f.mu.Unlock()
}

func (f *flushes) doneLocked(epoch uint64, n int) {
	c := f.pending[epoch] - n
	if c > 0 {
		f.pending[epoch] = c
		return
	}
	delete(f.pending, epoch)
	if epoch < f.epoch {
		close(f.resolvedCh)
		f.resolvedCh = make(chan struct{})
	}
}

// settleBatch resolves what a group commit made durable (err nil) or
// failed to (err), or what the end of a replay made moot (err nil: every
// record in the spool has been acknowledged).
func (f *flushes) settleBatch(b *syncBatch, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range b.counts {
		if err != nil {
			f.failures += uint64(c.n)
		}
		f.doneLocked(c.epoch, c.n)
	}
	how := "spooled"
	if err != nil {
		how = "error"
	}
	for _, r := range b.recs {
		f.settleLocked(r, err, how)
	}
}

// failed is the number of messages lost so far.
func (f *flushes) failed() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failures
}

// next starts a new epoch and returns the one it ends, with the failure
// count at that moment.
func (f *flushes) next() (epoch, failures uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	epoch = f.epoch
	f.epoch++
	return epoch, f.failures
}

// drained reports whether every message of epoch e and earlier is resolved;
// if not, ch is closed at the next change worth looking at. failures is the
// current failure count.
func (f *flushes) drained(e uint64) (done bool, ch <-chan struct{}, failures uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ep := range f.pending {
		if ep <= e {
			return false, f.resolvedCh, f.failures
		}
	}
	return true, f.resolvedCh, f.failures
}

// Flush waits until every message accepted before the call is acknowledged
// by JetStream or fsynced in the spool. It returns ctx's error if ctx ends
// first, or an error if some of those messages were lost (spool write or
// fsync failure).
func (p *Publisher) Flush(ctx context.Context) error {
	if p.disabled {
		return nil
	}
	e, f0 := p.flush.next()
	wake(p.commit.now)
	wake(p.direct.wake)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		done, ch, failures := p.flush.drained(e)
		if done {
			if failed := failures - f0; failed > 0 {
				return fmt.Errorf("nats publisher: %d message(s) could be neither published nor spooled", failed)
			}
			return nil
		}
		select {
		case <-ch:
		case <-tick.C:
			wake(p.commit.now)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
