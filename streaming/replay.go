package streaming

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
)

// Replay: while the publisher is spooling, one goroutine reads the spool
// from its head and publishes records with up to MaxInFlight in flight (a
// sliding window), settling acks in spool order and moving the head past
// each acknowledged record. A failure stops the pass with the head at the
// first record not acknowledged; the next pass (on reconnect, breaker
// half-open, or a 500ms tick) resumes there. Records behind a failed one
// that JetStream did store are published again by that pass and deduped by
// msg id. Once nothing is left after the head, the spool is deleted and new
// messages go straight to JetStream again; that switch happens under the
// lock that appends take, so nothing can overtake.

const headCheckpointEvery = 200 * time.Millisecond

// replayer is the replay part's own state. It has no lock: reader and
// lastHead belong to the replay goroutine (NewPublisher sets them before it
// starts, Close and crash use them after it stopped), and what Health reads
// is atomic. The spool it reads and the head it moves are spoolLog's.
type replayer struct {
	wake     chan struct{} // replay: spooling began, a connection or the breaker changed
	reader   spoolReader   // the next record to read
	lastHead time.Time     // when the head was last checkpointed
	inflight atomic.Int64  // replay publishes awaiting their ack
	active   atomic.Bool   // a replay pass is running
}

type replayEntry struct {
	rec        spoolRecord
	start, end spoolPos
	skip       bool // already acked on the direct path
	done       func(error)
	connEpoch  uint64
	fut        jetstream.PubAckFuture
	sendErr    error
}

func (p *Publisher) replayLoop() {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-p.replay.wake:
		case <-tick.C:
		}
		for p.canReplay() && p.replayPass() {
		}
	}
}

func (p *Publisher) canReplay() bool {
	select {
	case <-p.stop:
		return false
	default:
	}
	p.mu.Lock()
	ok := p.spooling && p.direct.inflight.len() == 0
	p.mu.Unlock()
	if !ok || !p.connected() {
		return false
	}
	return p.br.state() != stateOpen
}

func (p *Publisher) setReplaying(v bool) {
	p.replay.active.Store(v)
	wake(p.health.wake)
}

// replayPass replays until blocked, interrupted or drained, keeping up to
// MaxInFlight records in flight (a sliding window: the head's ack is awaited
// while later records are already on the wire). It reports whether another
// pass may make progress right away.
func (p *Publisher) replayPass() bool {
	p.setReplaying(true)
	defer p.setReplaying(false)
	_, span := p.tracer.Start(context.Background(), "nats.spool.replay")
	replayed := 0
	defer func() {
		span.SetAttributes(attribute.Int("kgents.replayed", replayed))
		span.End()
	}()
	t := time.NewTimer(time.Hour)
	t.Stop()
	var (
		q        fifo[*replayEntry]
		held     *replayEntry // read but not sent (the breaker said no)
		failed   bool
		caughtUp bool
		idle     int // consecutive empty rounds
	)
	defer func() {
		if held != nil {
			p.replay.reader.seek(held.start)
		}
	}()
	for {
		// Fill the window.
		for !failed && q.len() < p.o.MaxInFlight {
			e := held
			held = nil
			if e == nil {
				if !p.connected() {
					break
				}
				rec, start, end, ok := p.readNext()
				if !ok {
					caughtUp = true
					break
				}
				caughtUp = false
				e = &replayEntry{rec: rec, start: start, end: end}
				e.skip = p.sp.acked(rec.seq)
				e.connEpoch = p.link.epoch.Load()
			}
			if !e.skip {
				done, err := p.br.allow()
				if err != nil { // open, or half-open with its probes out
					held = e
					break
				}
				e.done = done
				p.replay.inflight.Add(1)
				e.fut, e.sendErr = p.js.PublishMsgAsync(e.rec.msg.natsMsg(), noClientRetry)
			}
			q.push(e)
		}
		if q.len() == 0 {
			switch {
			case failed:
				p.replay.reader.seek(p.sp.position())
				span.SetStatus(codes.Error, "replay interrupted")
				p.maybeWriteHead(true)
				return false
			case held != nil || !p.connected():
				p.maybeWriteHead(true)
				return false // wait for the breaker or the connection
			case caughtUp:
				if p.tryFinishReplay() || idle > 2 {
					return false
				}
				idle++ // appended meanwhile: read on
			}
			continue
		}
		// Settle the oldest record.
		idle = 0
		e := q.pop()
		if e.skip {
			if !failed {
				p.sp.advance(e.rec.seq, e.end)
			}
			continue
		}
		ack, err, stopped := p.waitAck(t, e.fut, e.sendErr)
		if stopped {
			p.replay.inflight.Store(0)
			held = nil
			return false
		}
		p.replay.inflight.Add(-1)
		out := p.classify(err, e.connEpoch)
		switch {
		case out == outRejected && failed:
			// Read again from the head after the failure before it: it is
			// settled then, once (a second settlement could move a
			// transcript message twice).
			out = outDisconnected
		case out == outRejected:
			out, ack, err = p.settleRefused(&e.rec.msg, err)
		}
		p.report(e.done, out, ack, e.rec.msg.Subject, err)
		if failed {
			continue // later outcomes do not move the head past a failure
		}
		switch out {
		case outOK:
			replayed++
			p.met.replayed.Inc()
		case outRejected:
			p.keepRejected(&e.rec.msg, err)
		default:
			failed = true
			if held != nil {
				held = nil // re-read from the head
			}
			p.log.Warn("nats spool replay interrupted; resuming later", "error", err, "spool_depth", p.sp.pending())
			continue
		}
		p.sp.advance(e.rec.seq, e.end)
		p.maybeWriteHead(false)
	}
}

// maybeWriteHead persists the replay position (at most every 200ms).
func (p *Publisher) maybeWriteHead(force bool) {
	if !force && time.Since(p.replay.lastHead) < headCheckpointEvery {
		return
	}
	p.replay.lastHead = time.Now()
	p.mu.Lock()
	spooling := p.spooling
	head := p.sp.position()
	p.mu.Unlock()
	if !spooling || head.idx == 0 {
		return
	}
	if err := p.sp.writeHead(head); err != nil {
		p.logLimited("nats spool: cannot write the replay checkpoint", "error", err)
	}
}

// tryFinishReplay deletes the spool and returns to direct publishing if
// every spooled record has been acknowledged. It holds Publisher.mu, the
// lock appends take, from the check to the switch, so nothing can be
// appended in between.
func (p *Publisher) tryFinishReplay() bool {
	p.mu.Lock()
	if !p.spooling || p.direct.inflight.len() > 0 {
		p.mu.Unlock()
		return false
	}
	b, ok := p.sp.resetIfDrained()
	if !ok {
		p.mu.Unlock()
		return false
	}
	p.spooling = false
	// Records still waiting for their fsync have all been acknowledged.
	p.flush.settleBatch(&b, nil)
	p.replay.reader.closeFile()
	p.replay.reader.seek(spoolPos{})
	p.mu.Unlock()
	p.log.Info("nats spool drained; publishing directly to JetStream")
	wake(p.direct.wake)
	wake(p.health.wake)
	return true
}

// readNext reads the record at the reader's position, moving across
// segments; ok is false when there is nothing more to read now.
func (p *Publisher) readNext() (rec spoolRecord, start, end spoolPos, ok bool) {
	r := &p.replay.reader
	for {
		sg, found := p.sp.segmentFrom(max(r.pos.idx, 1))
		if !found {
			return rec, start, end, false
		}
		size, sealed, path, idx := sg.size, sg.sealed, sg.path, sg.idx
		if idx != r.pos.idx || r.pos.off < segHeaderLen {
			r.seek(spoolPos{idx: idx, off: max(segHeaderLen, offIfSame(r.pos, idx))})
		}
		if r.pos.off >= size {
			if sealed {
				r.seek(spoolPos{idx: idx + 1, off: segHeaderLen})
				continue
			}
			return rec, start, end, false
		}
		if r.f == nil || r.fidx != idx {
			r.closeFile()
			f, err := os.Open(path)
			if err != nil {
				p.logLimited("nats spool: cannot open a segment for replay", "file", path, "error", err)
				return rec, start, end, false
			}
			r.f, r.fidx = f, idx
		}
		hdr, err := r.bytes(r.pos.off, recHeaderLen, size)
		if err != nil {
			p.skipCorrupt(idx, r.pos.off, err)
			continue
		}
		n := binary.LittleEndian.Uint32(hdr)
		sum := binary.LittleEndian.Uint32(hdr[4:])
		if n < minRecordBody || n > maxRecordBody || r.pos.off+recHeaderLen+int64(n) > size {
			p.skipCorrupt(idx, r.pos.off, errBadRecord)
			continue
		}
		body, err := r.bytes(r.pos.off+recHeaderLen, int(n), size)
		if err != nil || crc32.Checksum(body, crcTable) != sum {
			p.skipCorrupt(idx, r.pos.off, errBadRecord)
			continue
		}
		if rec, err = decodeRecord(body); err != nil {
			p.skipCorrupt(idx, r.pos.off, err)
			continue
		}
		start = r.pos
		r.pos.off += recHeaderLen + int64(n)
		return rec, start, r.pos, true
	}
}

func offIfSame(p spoolPos, idx uint64) int64 {
	if p.idx == idx {
		return p.off
	}
	return 0
}

// skipCorrupt gives up on the rest of a segment that cannot be read (it
// passed recovery and was written by us, so this means the disk changed
// under us). New appends go to a fresh segment.
func (p *Publisher) skipCorrupt(idx uint64, off int64, err error) {
	p.log.Error("nats spool: unreadable record; skipping the rest of the segment", "segment", idx, "offset", off, "error", err)
	p.met.spoolErrs.Inc()
	p.sp.cutSegment(idx, off)
	p.replay.reader.seek(spoolPos{idx: idx + 1, off: segHeaderLen})
}

// settleRefused decides what a message JetStream refused at replay comes
// to: a duplicate of one already stored, settled by the Resolve hook,
// retried later (the check could not be made), or rejected for good.
func (p *Publisher) settleRefused(m *Message, refused error) (outcome, *jetstream.PubAck, error) {
	stored, err := p.storedAlready(m, refused)
	switch {
	case err != nil:
		// Whether the message is a duplicate cannot be told now (the
		// stream is electing a leader, say): retry it, never drop it.
		// Like a lost connection, this says nothing of the publish path,
		// so the breaker does not count it.
		return outDisconnected, nil, fmt.Errorf("%w: %w", ErrUnsettled, err)
	case stored:
		// A write-once message whose first publish was stored though its
		// ack was lost: this copy is a duplicate, not a rejection.
		return outOK, &jetstream.PubAck{Duplicate: true}, nil
	case p.o.Resolve == nil:
		return outRejected, nil, refused
	}
	ctx, cancel := context.WithTimeout(p.life, ResolveTimeout)
	defer cancel()
	switch err := p.o.Resolve(ctx, m, refused); {
	case err != nil && p.life.Err() != nil:
		// Stopped while settling: the message stays in the spool and is
		// settled at the next start.
		return outDisconnected, nil, fmt.Errorf("%w: %w", ErrUnsettled, err)
	case err == nil:
		p.met.resolved.Inc()
		p.log.Info("nats publisher: a refused spooled message was settled", "subject_type", subjectType(m.Subject), "msg_id", m.MsgID, "refused", refused)
		return outOK, nil, nil
	case errors.Is(err, ErrUnsettled):
		return outDisconnected, nil, err
	default:
		return outRejected, nil, fmt.Errorf("%w (not settled: %w)", refused, err)
	}
}

// storedAlready reports whether a write-once message (expected last
// subject sequence 0) refused with "wrong last sequence" is refused because
// the same message — the same Nats-Msg-Id — is already on its subject.
// JetStream checks the expected sequence before its duplicate window, so a
// spooled copy of a message whose ack was lost in an outage is refused
// rather than deduplicated. An error means the check could not be made.
func (p *Publisher) storedAlready(m *Message, err error) (bool, error) {
	var apiErr *jetstream.APIError
	if m.Header[jetstream.ExpectedLastSubjSeqHeader] != "0" || !errors.As(err, &apiErr) ||
		(apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence && apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(p.life, DirectReadTimeout)
	defer cancel()
	stream, err := p.js.StreamNameBySubject(ctx, m.Subject)
	if err != nil {
		return false, err
	}
	stored, err := Last(ctx, p.js, stream, m.Subject)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return stored.Header.Get(jetstream.MsgIDHeader) == m.MsgID, nil
}
