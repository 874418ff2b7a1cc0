package streaming

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Group commit: appends to the spool are plain writes; one fsync, at most
// SyncInterval after the first append it covers (or at once for Flush and
// Close), makes every record appended since the previous one durable and
// resolves their waiters.

type epochCount struct {
	epoch uint64
	n     int
}

// syncBatch is what the next fsync makes durable. It lives in spoolLog
// (under spoolLog.mu, with the files it refers to); a group commit takes it.
type syncBatch struct {
	counts []epochCount // Publish records: counted per Flush epoch
	recs   []*rec       // records with a waiter, or copies of direct publishes
}

func (b *syncBatch) empty() bool { return len(b.counts) == 0 && len(b.recs) == 0 }

func (b *syncBatch) addCount(epoch uint64) {
	if l := len(b.counts); l > 0 && b.counts[l-1].epoch == epoch {
		b.counts[l-1].n++
		return
	}
	b.counts = append(b.counts, epochCount{epoch: epoch, n: 1})
}

// syncWork is what one group commit takes from the spool in one step: the
// batch and every file it must fsync for that batch to be durable.
type syncWork struct {
	batch    syncBatch
	sealed   []*os.File // sealed segments not yet fsynced: fsync, then close
	active   *os.File   // the segment appends go to (nil if none)
	dirDirty bool       // segments were created or removed
}

// groupCommit is the spool's syncer. syncMu makes group commits one at a
// time (the sync goroutine's, and Close's last one), so a file handed over
// for fsync and close is closed by the commit that took it.
type groupCommit struct {
	sp       *spoolLog
	fl       *flushes
	met      *pubMetrics
	log      *slog.Logger
	dir      string
	interval time.Duration

	wake chan struct{} // a record joined an empty batch: commit within interval
	now  chan struct{} // commit at once (Flush)

	syncMu sync.Mutex
	fsyncs atomic.Uint64 // group commits that fsynced a batch
}

func newGroupCommit(sp *spoolLog, fl *flushes, wakeCh chan struct{}, dir string, interval time.Duration, met *pubMetrics, log *slog.Logger) *groupCommit {
	return &groupCommit{sp: sp, fl: fl, met: met, log: log, dir: dir, interval: interval, wake: wakeCh, now: make(chan struct{}, 1)}
}

// run is the sync goroutine.
func (g *groupCommit) run(stop <-chan struct{}) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-g.now:
		case <-g.wake:
			// Let more appends join this commit.
			t.Reset(g.interval)
			select {
			case <-t.C:
			case <-g.now:
				t.Stop()
			case <-stop:
				t.Stop()
				return
			}
		}
		g.syncOnce()
	}
}

// syncOnce fsyncs everything appended so far and resolves its waiters.
func (g *groupCommit) syncOnce() {
	g.syncMu.Lock()
	defer g.syncMu.Unlock()
	w := g.sp.takeSync()
	if w.batch.empty() && len(w.sealed) == 0 && !w.dirDirty {
		return
	}
	var err error
	for _, f := range w.sealed {
		if e := f.Sync(); e != nil && err == nil {
			err = e
		}
		_ = f.Close()
	}
	if w.active != nil && !w.batch.empty() {
		g.fsyncs.Add(1)
		if e := w.active.Sync(); e != nil && err == nil {
			err = e
		}
	}
	if w.dirDirty {
		if e := syncDir(g.dir); e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		err = fmt.Errorf("spool fsync: %w", err)
		g.met.spoolErrs.Inc()
		g.log.Error("nats spool: fsync failed", "error", err)
		// Before the waiters hear of it, so that Health shows it to them.
		g.sp.setErr(err.Error())
	}
	g.fl.settleBatch(&w.batch, err)
}
