package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/streaming"
)

// Spooled writes are replayed late, after other replicas may have moved a
// session on: a replica cut off from NATS finishes its turn from its cache,
// the turn's lease lapses before the spool is replayed, and another replica
// closes the turn and runs the next one. Two things then refuse a plain
// replay, and this file settles both instead of losing an acknowledged
// write (SPEC §4.9: an acknowledged message is never lost).
//
//   - A spooled record put is a compare-and-set against the revision its
//     replica last read (expectedRevision). Refused, it is merged into the
//     current record (mergeSpooled): counters never go back, a lease is
//     dropped only by the turn that held it.
//   - A spooled transcript message whose number was taken by another turn
//     is moved to the end of the transcript (relocate): its number is
//     reserved by compare-and-set on the record, then it is written there,
//     once, under its own message id.

// releasedHeader names, on a spooled record put, the turn whose lease that
// write gave up (the merge drops the lease only if it is still that turn's).
const releasedHeader = "Kgents-Released-Turn"

// expectedRevision makes a spooled record put a compare-and-set (the
// header that makes a transcript subject write-once, with a revision).
const expectedRevision = jetstream.ExpectedLastSubjSeqHeader

// Resolver returns the publisher's Resolve hook for the session store's
// subjects (streaming.PublisherOptions.Resolve). log receives a warning for
// every moved transcript message.
func (s *JetStream) Resolver(log *slog.Logger) func(ctx context.Context, m *streaming.Message, refused error) error {
	if log == nil {
		log = slog.Default()
	}
	rl := &relocator{s: s, log: log}
	return func(ctx context.Context, m *streaming.Message, refused error) error {
		if !isWrongLastSequence(refused) {
			return refused
		}
		switch {
		case strings.HasPrefix(m.Subject, kvSubject(SessionsBucket, "")):
			return s.mergeRecord(ctx, m)
		case strings.HasPrefix(m.Subject, transcriptRoot+"."):
			return rl.relocate(ctx, m)
		}
		return refused
	}
}

// unsettled marks a resolution that may succeed later: storage out of
// reach, a deadline, or a compare-and-set that kept losing (other
// replicas' replays settling at the same moment).
func unsettled(err error) error {
	if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrConflict) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", streaming.ErrUnsettled, err)
	}
	return err
}

// isRefusal reports a JetStream error that retrying cannot fix (a 4xx API
// error: a limit, a bad header), as opposed to storage out of reach.
func isRefusal(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code >= 400 && apiErr.Code < 500
}

// mergeRecord applies a refused spooled record put as a merge.
func (s *JetStream) mergeRecord(ctx context.Context, m *streaming.Message) error {
	spooled, err := decodeRecord(m.Data, 0)
	if err != nil {
		return err
	}
	released := m.Header[releasedHeader]
	_, err = s.Update(ctx, spooled.Session.GetTenantId(), spooled.Session.GetId(), func(cur *Record) error {
		mergeSpooled(cur, spooled, released)
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return nil // removed meanwhile: nothing to merge into
	}
	return unsettled(err)
}

// mergeSpooled merges a spooled record into the current one. Every field a
// turn moves only forward takes the larger value, so replaying an older
// write (its own replica's, or one that raced a takeover) never undoes a
// newer one. TokensUsed takes the larger too: when two replicas added
// tokens to one session during a split, the smaller addition is not
// counted there (billing counts them from the usage events, not from here).
func mergeSpooled(cur, sp *Record, released string) {
	c, o := cur.Session, sp.Session
	c.MessageCount = max(c.GetMessageCount(), o.GetMessageCount())
	c.TokensUsed = max(c.GetTokensUsed(), o.GetTokensUsed())
	if o.GetLastMessageAt().AsTime().After(c.GetLastMessageAt().AsTime()) {
		// The later turn's end set both.
		c.LastMessageAt, c.Mode = o.GetLastMessageAt(), o.GetMode()
	}
	if o.GetStatus() == sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
		c.Status = o.GetStatus()
	}
	cur.EventSeq = max(cur.EventSeq, sp.EventSeq)
	switch {
	case cur.Turn != nil && sp.Turn != nil && cur.Turn.ID == sp.Turn.ID:
		// A renewal or reservation of the turn in flight.
		if sp.Turn.Expires.After(cur.Turn.Expires) {
			cur.Turn.Expires = sp.Turn.Expires
		}
		cur.Turn.EventCeiling = max(cur.Turn.EventCeiling, sp.Turn.EventCeiling)
	case cur.Turn == nil && sp.Turn != nil && c.GetMessageCount() <= sp.Turn.FirstMessage && cur.EventSeq < sp.Turn.EventCeiling:
		// A turn begun while cut off and not finished as far as anyone
		// stored (a finished turn moved the count or the event ids past
		// its start): it is in flight, and its lease says until when.
		t := *sp.Turn
		cur.Turn = &t
	case cur.Turn != nil && sp.Turn == nil && cur.Turn.ID == released:
		cur.Turn = nil
	}
}

// relocator moves transcript messages whose number was taken. Each move
// is idempotent: a message already moved (an earlier attempt whose outcome
// was lost, a replay after a crash) is found by its id before a new place is
// reserved, and a place reserved by a failed attempt is tried again first,
// so retries neither store a message twice nor leave a gap per attempt.
type relocator struct {
	s        *JetStream
	log      *slog.Logger
	reserved reservations
}

// reservations remembers the place reserved for a message (by id) whose
// write did not complete; bounded by maxReserved (cleared when full: a
// forgotten reservation costs one empty place, nothing else). A nil
// *reservations remembers nothing.
type reservations struct {
	mu     sync.Mutex
	places map[string]int
}

const maxReserved = 4096

// errWriteRefused is a transcript write the stream refused for good (a
// limit, a bad header): retrying cannot store it.
var errWriteRefused = errors.New("the stream refused the transcript write")

func (r *reservations) get(msgID string) (int, bool) {
	if r == nil {
		return 0, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.places[msgID]
	return n, ok
}

func (r *reservations) put(msgID string, n int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.places == nil || len(r.places) >= maxReserved {
		r.places = map[string]int{}
	}
	r.places[msgID] = n
}

func (r *reservations) drop(msgID string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.places, msgID)
}

// relocate writes a transcript message whose number another message took
// at the end of the transcript.
func (rl *relocator) relocate(ctx context.Context, m *streaming.Message) error {
	s := rl.s
	tenantID, sessionID, from, ok := parseTranscriptSubject(m.Subject)
	if !ok {
		return fmt.Errorf("not a transcript subject: %q", m.Subject)
	}
	var msg sessionsv1.Message
	if err := apijson.Unmarshal(m.Data, &msg); err != nil {
		return fmt.Errorf("spooled message is corrupt: %w", err)
	}
	rec, err := s.Get(ctx, tenantID, sessionID)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return unsettled(err)
	}
	if at, found, err := s.findMessage(ctx, tenantID, sessionID, m.MsgID, from+1, int(rec.Session.GetMessageCount())); err != nil {
		return unsettled(err)
	} else if found {
		rl.reserved.drop(m.MsgID)
		rl.log.Info("a transcript message spooled during an outage was moved already", "session_id", sessionID, "message_id", m.MsgID, "at", at)
		return nil
	}
	n, ack, err := s.writeAtEnd(ctx, tenantID, sessionID, m.Data, m.MsgID, &rl.reserved)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil // removed meanwhile
	case errors.Is(err, errWriteRefused):
		return err
	case err != nil:
		return unsettled(err)
	}
	rl.log.Warn("a transcript message spooled during an outage lost its place to another turn; stored at the end of the transcript",
		"session_id", sessionID, "message_id", msg.GetId(), "from", from, "to", n, "duplicate", ack.Duplicate)
	return nil
}

// AppendAtEnd stores m at a number reserved past every other (Store).
func (s *JetStream) AppendAtEnd(ctx context.Context, tenantID string, m *sessionsv1.Message) (int, error) {
	if _, _, err := s.resources(ctx); err != nil {
		return 0, err
	}
	b, err := apijson.Marshal(m)
	if err != nil {
		return 0, err
	}
	n, _, err := s.writeAtEnd(ctx, tenantID, m.GetSessionId(), b, m.GetId(), nil)
	return n, err
}

// writeAtEnd writes data, message msgID, at a transcript number reserved
// past every other, reserving again (up to 3 times) when a message
// replayed at its original number takes the place first. A place whose
// write failed is kept in places (nil: not kept), so a retry tries it
// before reserving another. A write the stream refuses for good
// (isRefusal) is errWriteRefused; other write failures are ErrUnavailable.
func (s *JetStream) writeAtEnd(ctx context.Context, tenantID, sessionID string, data []byte, msgID string, places *reservations) (int, *jetstream.PubAck, error) {
	for range 3 {
		n, ok := places.get(msgID)
		if !ok {
			var err error
			if n, err = s.reserveAtEnd(ctx, tenantID, sessionID); err != nil {
				return 0, nil, err
			}
			places.put(msgID, n)
		}
		ack, err := s.writeOnceAt(ctx, TranscriptSubject(tenantID, sessionID, n), data, msgID)
		switch {
		case isWrongLastSequence(err):
			places.drop(msgID) // taken after all: reserve another
			continue
		case isRefusal(err):
			places.drop(msgID)
			return 0, nil, fmt.Errorf("%w: %w", errWriteRefused, err)
		case err != nil:
			return 0, nil, unavailable(ctx, err) // the place is kept
		}
		places.drop(msgID)
		return n, ack, nil
	}
	return 0, nil, fmt.Errorf("%w: every place reserved at the end of the transcript was taken", ErrConflict)
}

// reserveAtEnd reserves the next transcript number by compare-and-set on
// the session record: past the count and past the two places a turn in
// flight owns.
func (s *JetStream) reserveAtEnd(ctx context.Context, tenantID, sessionID string) (int, error) {
	var n int
	_, err := s.Update(ctx, tenantID, sessionID, func(r *Record) error {
		n = endPlace(r)
		r.Session.MessageCount = int32(n + 1)
		return nil
	})
	return n, err
}

// endPlace is the transcript number a message appended at the end of r's
// session takes: past the count and past the two places a turn in flight
// owns.
func endPlace(r *Record) int {
	n := int(r.Session.GetMessageCount())
	if r.Turn != nil {
		n = max(n, int(r.Turn.FirstMessage)+2)
	}
	return n
}

// findMessage looks for message id in the transcript's numbers from..to-1,
// the last MaxMessagesRead of them (a moved message is near the end).
func (s *JetStream) findMessage(ctx context.Context, tenantID, sessionID, id string, from, to int) (int, bool, error) {
	from = max(from, to-MaxMessagesRead)
	if from >= to {
		return 0, false, nil
	}
	msgs, err := s.Messages(ctx, tenantID, sessionID, from, to)
	if err != nil {
		return 0, false, err
	}
	for i, m := range msgs {
		if m.GetId() == id {
			return from + i, true, nil // a position hint: gaps shift it
		}
	}
	return 0, false, nil
}

// parseTranscriptSubject splits a TranscriptSubject.
func parseTranscriptSubject(subject string) (tenantID, sessionID string, n int, ok bool) {
	rest, ok := strings.CutPrefix(subject, transcriptRoot+".")
	if !ok {
		return "", "", 0, false
	}
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		return "", "", 0, false
	}
	n, err := strconv.Atoi(rest[i+1:])
	if err != nil {
		return "", "", 0, false
	}
	rest = rest[:i]
	j := strings.LastIndexByte(rest, '.')
	if j <= 0 {
		return "", "", 0, false
	}
	return rest[:j], rest[j+1:], n, true
}
