package streaming

import (
	"sync"
	"time"
)

// spoolLog is the spool as the publisher uses it: the segment files
// (spool.go, a single-owner structure with no lock of its own), the replay
// position, and what the next group commit must make durable, all under mu.
//
// Invariants (mu):
//   - every record before head has been acknowledged by JetStream; depth
//     counts the records at or after head; skip holds the seqs at or after
//     head already acknowledged on the direct path (replay skips them);
//   - every record in batch has been written to a file that the next
//     takeSync hands over (the active segment, or a sealed one in
//     files.pendingClose), so the fsync that follows covers it;
//   - the gauges kgents_nats_fallback_queue_depth and kgents_nats_spool_bytes
//     are set from depth and files.total in the section that changes them.
//
// Appends (append) are made with Publisher.mu held, which keeps the spool's
// order the FIFO's order; everything else here needs only mu.
type spoolLog struct {
	met        *pubMetrics
	commitWake chan struct{} // groupCommit.wake: a record joined an empty batch

	mu    sync.Mutex
	files *spool
	head  spoolPos            // replay position
	depth int64               // records at or after head
	skip  map[uint64]struct{} // seqs at or after head acknowledged directly
	batch syncBatch           // written since the last group commit took its batch
	err   string              // the last write or fsync error; "" after a successful write
}

func newSpoolLog(files *spool, rcv spoolRecovery, met *pubMetrics, commitWake chan struct{}) *spoolLog {
	return &spoolLog{
		met:        met,
		commitWake: commitWake,
		files:      files,
		head:       rcv.head,
		depth:      rcv.records,
		skip:       map[uint64]struct{}{},
	}
}

// append writes m at the end of the spool and adds it to the group-commit
// batch: r (may be nil) is resolved when the record is fsynced; without r
// the record is counted for Flush in epoch. Publisher.mu must be held.
func (s *spoolLog) append(m *Message, r *rec, epoch uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := s.files.nextSeq
	if err := s.files.append(seq, time.Now().UnixNano(), m); err != nil {
		s.err = err.Error()
		s.met.spoolErrs.Inc()
		return 0, err
	}
	s.err = ""
	s.files.nextSeq++
	s.depth++
	if s.batch.empty() {
		wake(s.commitWake)
	}
	if r != nil {
		s.batch.recs = append(s.batch.recs, r)
	} else {
		s.batch.addCount(epoch)
	}
	s.updateGaugesLocked()
	return seq, nil
}

// takeSync hands the batch and the files it needs fsynced to a group
// commit, in one step (see the invariants).
func (s *spoolLog) takeSync() syncWork {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := syncWork{batch: s.batch, sealed: s.files.pendingClose, active: s.files.active, dirDirty: s.files.dirDirty}
	s.batch = syncBatch{}
	s.files.pendingClose = nil
	s.files.dirDirty = false
	return w
}

// setErr records a failed group commit for Health.
func (s *spoolLog) setErr(msg string) {
	s.mu.Lock()
	s.err = msg
	s.mu.Unlock()
}

// markAcked notes that record seq was acknowledged on the direct path.
func (s *spoolLog) markAcked(seq uint64) {
	s.mu.Lock()
	s.skip[seq] = struct{}{}
	s.mu.Unlock()
}

// acked reports whether record seq was acknowledged on the direct path.
func (s *spoolLog) acked(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.skip[seq]
	return ok
}

// advance moves the head past record seq, acknowledged (or skipped), which
// ends at end, and deletes the segments left entirely behind.
func (s *spoolLog) advance(seq uint64, end spoolPos) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.head = end
	if s.depth > 0 {
		s.depth--
	}
	delete(s.skip, seq)
	if len(s.files.segs) > 0 {
		if first := s.files.segs[0]; first.sealed && (first.idx < s.head.idx || (first.idx == s.head.idx && s.head.off >= first.size)) {
			s.files.dropBefore(s.head)
		}
	}
	s.updateGaugesLocked()
}

// resetIfDrained deletes the spool if no record is left after the head,
// and returns the batch still waiting for its fsync (every record of it has
// been acknowledged). Publisher.mu must be held, with nothing in flight on
// the direct path: then no record can be appended before spooling is
// cleared.
func (s *spoolLog) resetIfDrained() (syncBatch, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files.hasRecordsAfter(s.head) {
		return syncBatch{}, false
	}
	s.files.reset()
	s.head = spoolPos{}
	s.depth = 0
	clear(s.skip)
	b := s.batch
	s.batch = syncBatch{}
	s.updateGaugesLocked()
	return b, true
}

// position is the replay position.
func (s *spoolLog) position() spoolPos {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.head
}

// pending is the number of records at or after the head.
func (s *spoolLog) pending() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.depth
}

// stats returns the depth, the bytes on disk and the last error.
func (s *spoolLog) stats() (depth, bytes int64, err string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.depth, s.files.total, s.err
}

// segInfo is a segment as the replay reader sees it: up to size, which
// only grows past records already written.
type segInfo struct {
	idx    uint64
	path   string
	size   int64
	sealed bool
}

// segmentFrom returns segment idx, or the first one after it.
func (s *spoolLog) segmentFrom(idx uint64) (segInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sg := s.files.find(idx)
	if sg == nil {
		return segInfo{}, false
	}
	return segInfo{idx: sg.idx, path: sg.path, size: sg.size, sealed: sg.sealed}, true
}

// cutSegment gives up on segment idx from off on (unreadable): it takes no
// more appends, and the rest no longer counts.
func (s *spoolLog) cutSegment(idx uint64, off int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sg := s.files.find(idx); sg != nil && sg.idx == idx {
		if last := s.files.last(); last == sg {
			s.files.seal()
		}
		sg.size = min(sg.size, off)
	}
}

// reject keeps m, refused by JetStream for good, in rejected.seg.
func (s *spoolLog) reject(m *Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.files.reject(0, time.Now().UnixNano(), m)
}

// writeHead checkpoints pos. It touches only the HEAD file, never the
// state under mu, so it runs without the lock.
func (s *spoolLog) writeHead(pos spoolPos) error { return s.files.writeHead(pos) }

// close releases the files (after the last group commit).
func (s *spoolLog) close() {
	s.mu.Lock()
	s.files.close()
	s.mu.Unlock()
}

func (s *spoolLog) updateGauges() {
	s.mu.Lock()
	s.updateGaugesLocked()
	s.mu.Unlock()
}

func (s *spoolLog) updateGaugesLocked() {
	s.met.depth.Set(float64(s.depth))
	s.met.bytes.Set(float64(s.files.total))
}

// keepRejected counts and logs a message JetStream refused for good and
// keeps it in rejected.seg.
func (p *Publisher) keepRejected(m *Message, err error) {
	p.health.dropped.Add(1)
	p.met.dropped.WithLabelValues(dropRejected).Inc()
	p.log.Error("nats publisher: JetStream rejected a message; kept in the spool's rejected.seg",
		"subject_type", subjectType(m.Subject), "msg_id", m.MsgID, "error", err)
	if p.sp != nil {
		if werr := p.sp.reject(m); werr != nil {
			p.log.Error("nats publisher: cannot keep the rejected message", "error", werr)
		}
	}
}
