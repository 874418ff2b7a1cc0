package sessionsvc

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/server/soulsvc"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/soul"
)

// A turn holds the session's lease (sessionstore.Turn) from the moment it is
// accepted until its reply is stored. The lease is renewed every third of
// TurnLease while the turn runs, so it lapses within TurnLease of the
// replica's death; the next send on any replica then closes the dead turn
// (recover) before taking its own. The lease also reserves the turn's event
// ids (eventReserve of them, extended if a reply needs more), so a dead
// turn's ids are never reused: the next turn starts after the reservation.

// eventReserve is how many event ids a turn reserves at a time; a reply
// needs about one per word (at most ~1,000 for the largest budget).
const eventReserve = 4096

// SendMessage runs a turn and returns the stored reply. Watchers see its
// message, mode and complete (or error) events, not its chunks.
func (s *Service) SendMessage(ctx context.Context, req *sessionsv1.SendMessageRequest) (*sessionsv1.SendMessageResponse, error) {
	t, err := s.begin(ctx, req.GetSessionId(), req.GetMessage(), req.GetMode(), req.GetBudget())
	if err != nil {
		return nil, err
	}
	t.streamChunks = false
	res := s.run(t, nil)
	if res.err != nil {
		return nil, res.err
	}
	return &sessionsv1.SendMessageResponse{Message: res.reply}, nil
}

// StreamMessage runs a turn and streams its events. The stream opens (its
// headers go out) once the turn is accepted and the user's message stored;
// from then on the turn finishes whatever the caller does.
func (s *Service) StreamMessage(req *sessionsv1.StreamMessageRequest, stream grpc.ServerStreamingServer[sessionsv1.StreamMessageResponse]) error {
	ctx := stream.Context()
	t, err := s.begin(ctx, req.GetSessionId(), req.GetMessage(), req.GetMode(), req.GetBudget())
	if err != nil {
		return err
	}
	t.streamChunks = true
	q := newQueue()
	t.open = func() error { return interceptors.OpenStream(stream) }
	go func() {
		defer q.close()
		s.run(t, q.push)
	}()
	var sendErr error
	for {
		ev, ok := q.pop()
		if !ok {
			break
		}
		if ev == nil { // the turn failed before the stream opened
			return t.openErr
		}
		// After the caller has gone, keep sending (each Send fails at once):
		// the turn goes on, and the interceptors that record the stream
		// (idempotency) still see every event to the end.
		if err := stream.Send(&sessionsv1.StreamMessageResponse{Event: ev}); err != nil && sendErr == nil {
			sendErr = err
		}
	}
	if t.openErr != nil {
		return t.openErr
	}
	if sendErr != nil && ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	return sendErr
}

// turn is one accepted message and its reply in progress.
type turn struct {
	ctx          context.Context // detached from the caller
	cancel       context.CancelCauseFunc
	tenantID     string
	sessionID    string
	turnID       string
	message      string
	mode         soulv1.Mode
	modeChanged  bool
	budget       soulv1.Budget
	firstMessage int       // transcript number of the user message
	started      time.Time // when the turn took the lease (stamped on its events)
	seq          uint64    // id of the last event emitted
	ceiling      uint64    // highest event id reserved
	streamChunks bool
	// open, when set, opens the caller's stream (after the user message is
	// stored); its failure is reported through openErr.
	open    func() error
	openErr error
}

// errShutdown is the cause a turn is cut with when the server's shutdown
// deadline comes before the turn's end.
var errShutdown = errors.New("the server is shutting down")

// leaseLapsed reports whether a lease has expired: its replica stopped
// renewing it. Records written before leases existed have no expiry and
// count from their start with the turn timeout.
func (s *Service) leaseLapsed(t *sessionstore.Turn) bool {
	exp := t.Expires
	if exp.IsZero() {
		exp = t.Started.Add(s.o.TurnTimeout + time.Minute)
	}
	return !s.now().Before(exp)
}

// begin validates and accepts a turn: the session exists, is the caller's
// and is open, the budget is allowed, and no other turn is in flight (a
// turn whose lease lapsed is closed first). Only then is anything written
// (the lease).
func (s *Service) begin(ctx context.Context, sessionID, message string, reqMode soulv1.Mode, reqBudget soulv1.Budget) (*turn, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	rec, err := s.o.Store.Get(ctx, id.TenantID, sessionID)
	if err != nil {
		return nil, storeError(err)
	}
	if rec.Session.GetStatus() == sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
		return nil, errClosed
	}
	mode, budget, err := soulsvc.Resolve(ctx, reqMode, reqBudget, rec.Session.GetMode())
	if err != nil {
		return nil, err
	}
	if rec.Turn != nil && s.leaseLapsed(rec.Turn) {
		if err := s.recover(ctx, id.TenantID, rec); err != nil {
			return nil, err
		}
	}
	t := &turn{tenantID: id.TenantID, sessionID: sessionID, turnID: uuid.NewString(), message: message, mode: mode, budget: budget}
	now := s.now()
	t.started = now
	rec, err = s.o.Store.Update(ctx, id.TenantID, sessionID, func(r *sessionstore.Record) error {
		if r.Session.GetStatus() == sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
			return errClosed
		}
		if r.Turn != nil {
			// Busy, or lapsed but closed by nobody yet (a race with another
			// recovery): either way not ours to take now.
			return errTurnInFlight
		}
		r.Turn = &sessionstore.Turn{
			ID: t.turnID, Started: now, Replica: s.o.Replica, Expires: now.Add(s.o.TurnLease),
			FirstMessage: r.Session.GetMessageCount(), EventCeiling: r.EventSeq + eventReserve,
			Mode: int32(mode), Budget: int32(budget),
		}
		return nil
	})
	if err != nil {
		return nil, storeError(err)
	}
	t.seq, t.ceiling, t.firstMessage = rec.EventSeq, rec.Turn.EventCeiling, int(rec.Turn.FirstMessage)
	t.modeChanged = rec.Session.GetMode() != mode
	tctx, cancelTimeout := context.WithTimeout(context.WithoutCancel(ctx), s.o.TurnTimeout)
	t.ctx, t.cancel = context.WithCancelCause(tctx)
	context.AfterFunc(t.ctx, cancelTimeout) // the timeout's timer ends with the turn
	return t, nil
}

type turnResult struct {
	reply *sessionsv1.Message
	err   error
}

// run carries the turn to its end. deliver, when set, receives every event
// for the caller's stream; nil means the turn failed before the stream
// opened (t.openErr says why).
func (s *Service) run(t *turn, deliver func(*sessionsv1.SessionEvent)) (res turnResult) {
	s.turns.Add(1)
	defer s.turns.Done()
	defer t.cancel(nil)
	ctx := t.ctx
	stopRenewing := s.renewLease(t)
	defer stopRenewing()
	if s.o.TurnCutoff != nil {
		// At the shutdown deadline the turn is cut: the engine stops, what
		// it produced is stored and billed, and the caller gets an error
		// event of type shutdown rather than a cut stream.
		go func() {
			select {
			case <-s.o.TurnCutoff:
				t.cancel(errShutdown)
			case <-ctx.Done():
			}
		}()
	}
	emit := func(ev *sessionsv1.SessionEvent, toWatchers bool) {
		if toWatchers {
			s.publish(ctx, t.tenantID, ev, t.started)
		}
		if deliver != nil {
			deliver(ev)
		}
	}
	event := func() *sessionsv1.SessionEvent {
		if t.seq+1 > t.ceiling {
			s.extendReservation(t)
		}
		t.seq++
		return &sessionsv1.SessionEvent{Id: strconv.FormatUint(t.seq, 10), SessionId: t.sessionID, Time: timestamppb.New(s.now())}
	}

	user := &sessionsv1.Message{
		Id: uuid.NewString(), SessionId: t.sessionID, Role: sessionsv1.Role_ROLE_USER,
		Content: t.message, CreatedAt: timestamppb.New(s.now()),
	}
	if err := s.o.Store.AppendMessage(ctx, t.tenantID, t.firstMessage, user); err != nil {
		s.release(t, t.seq)
		t.openErr = storeError(err)
		if deliver != nil {
			deliver(nil)
		}
		return turnResult{err: t.openErr}
	}
	if t.open != nil {
		if err := t.open(); err != nil {
			// The caller left before the stream opened; the turn goes on.
			s.o.Logger.DebugContext(ctx, "caller gone before the stream opened", "error", err)
		}
	}
	metering.RecordSession(ctx, metering.SessionUsage{SessionID: t.sessionID, Role: "user", MessageLength: utf8.RuneCountInString(t.message)})
	ev := event()
	ev.Payload = &sessionsv1.SessionEvent_Message{Message: &sessionsv1.MessageEvent{MessageId: user.GetId(), Role: sessionsv1.Role_ROLE_USER, Content: t.message}}
	emit(ev, true)
	if t.modeChanged {
		ev := event()
		ev.Payload = &sessionsv1.SessionEvent_Mode{Mode: &sessionsv1.ModeEvent{Mode: t.mode}}
		emit(ev, true)
	}

	req := soul.Request{Message: t.message, Mode: t.mode, Budget: t.budget}
	if s.o.Engine.Name() != "template" {
		req.History = s.history(ctx, t, user.GetId())
	}
	reply, engineErr := s.o.Engine.Stream(ctx, req, func(c soul.Chunk) error {
		if !t.streamChunks {
			// A unary turn's chunks go nowhere: they take no event ids, so
			// a session's ids stay contiguous (watchers read a gap in them
			// as an event still on its way).
			return nil
		}
		ev := event()
		ev.Payload = &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: c.Text, Index: int32(c.Index)}}
		emit(ev, true)
		return nil
	})
	if engineErr != nil && errors.Is(context.Cause(ctx), errShutdown) {
		engineErr = errShutdown
	}
	soulsvc.RecordReply(ctx, reply, t.sessionID)

	var assistant *sessionsv1.Message
	if reply.Text != "" || engineErr == nil {
		assistant = &sessionsv1.Message{
			Id: uuid.NewString(), SessionId: t.sessionID, Role: sessionsv1.Role_ROLE_ASSISTANT,
			Content: reply.Text, TokensUsed: int32(reply.TokensUsed()), CreatedAt: timestamppb.New(s.now()),
		}
	}
	final := event()
	storeErr := s.storeReply(t, assistant, reply, final.GetId(), stopRenewing)
	switch {
	case storeErr != nil:
		final.Payload = &sessionsv1.SessionEvent_Error{Error: &soulv1.DialogueError{
			Error: "the reply could not be stored; it is not in the history", Type: "storage_error"}}
		res.err = storeError(storeErr)
	case errors.Is(engineErr, errShutdown):
		final.Payload = &sessionsv1.SessionEvent_Error{Error: &soulv1.DialogueError{
			Error: "the server is shutting down; the partial reply is stored, send the message again to continue", Type: "shutdown"}}
		res.err = status.Error(codes.Unavailable, "the server is shutting down; retry")
	case engineErr != nil:
		st := status.Convert(soulsvc.EngineError(engineErr))
		final.Payload = &sessionsv1.SessionEvent_Error{Error: &soulv1.DialogueError{Error: st.Message(), Type: soulsvc.ErrorType(engineErr)}}
		res.err = st.Err()
	default:
		final.Payload = &sessionsv1.SessionEvent_Complete{Complete: &soulv1.DialogueComplete{
			Text: reply.Text, TokensUsed: int32(reply.TokensUsed()), Chunks: int32(reply.Chunks),
			MessageId: assistant.GetId(), Mode: t.mode, Budget: t.budget,
		}}
		res.reply = assistant
	}
	emit(final, true)
	if assistant != nil && storeErr == nil {
		metering.RecordSession(ctx, metering.SessionUsage{SessionID: t.sessionID, Role: "assistant", MessageLength: utf8.RuneCountInString(reply.Text)})
	}
	return res
}

// renewLease keeps the turn's lease alive until the returned stop is called.
func (s *Service) renewLease(t *turn) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(max(s.o.TurnLease/3, 10*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), max(s.o.TurnLease/3, time.Second))
			_, err := s.o.Store.Update(ctx, t.tenantID, t.sessionID, func(r *sessionstore.Record) error {
				if r.Turn == nil || r.Turn.ID != t.turnID {
					return errLeaseLost
				}
				r.Turn.Expires = s.now().Add(s.o.TurnLease)
				return nil
			})
			cancel()
			if errors.Is(err, errLeaseLost) {
				s.o.Logger.Warn("turn lease taken over by another replica; finishing the turn without it", "session_id", t.sessionID)
				return
			}
			if err != nil {
				s.o.Logger.Warn("could not renew a turn lease", "session_id", t.sessionID, "error", err)
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-finished }) }
}

var errLeaseLost = errors.New("turn lease lost")

// extendReservation reserves more event ids for a reply longer than the
// reservation. If the record cannot be updated the turn keeps counting:
// its lease is live, so no other turn can take ids meanwhile.
func (s *Service) extendReservation(t *turn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), 5*time.Second)
	defer cancel()
	next := t.ceiling + eventReserve
	_, err := s.o.Store.Update(ctx, t.tenantID, t.sessionID, func(r *sessionstore.Record) error {
		if r.Turn == nil || r.Turn.ID != t.turnID {
			return errLeaseLost
		}
		r.Turn.EventCeiling = max(r.Turn.EventCeiling, next)
		return nil
	})
	if err != nil {
		s.o.Logger.Warn("could not extend a turn's event ids", "session_id", t.sessionID, "error", err)
	}
	t.ceiling = next
}

// storeReplyTimeout bounds storing a reply. It has its own deadline: a turn
// that ran into its timeout must still store what it produced.
const storeReplyTimeout = 30 * time.Second

// storeReply stores the reply (partial after an engine failure) and
// finishes the turn: counters, mode, last event id (finalID, the event that
// reports the outcome), lease released. The lease is renewed until the
// reply is written (a slow write — a spooled one, an election — must not
// let it lapse) and stopped just before the update that releases it. It
// returns an error only when the reply could not be stored, or could not be
// confirmed stored; the transcript is the source of truth, so a failure to
// update the counters afterwards is logged, not reported (the lease lapses
// and the next send repairs them).
func (s *Service) storeReply(t *turn, assistant *sessionsv1.Message, reply soul.Reply, finalID string, stopRenewing func()) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), storeReplyTimeout)
	defer cancel()
	final, _ := strconv.ParseUint(finalID, 10, 64)
	added := int32(1)
	if assistant != nil {
		err := s.o.Store.AppendMessage(ctx, t.tenantID, t.firstMessage+1, assistant)
		if errors.Is(err, sessionstore.ErrConflict) && s.leaseHeld(ctx, t) {
			// The reply's place was taken while this turn held the lease:
			// a message another replica spooled during an outage, replayed
			// at its original number. The reply goes to the end instead.
			var n int
			if n, err = s.o.Store.AppendAtEnd(ctx, t.tenantID, assistant); err == nil {
				s.o.Logger.WarnContext(ctx, "a reply's place was taken by a message replayed late; stored at the end of the transcript",
					"session_id", t.sessionID, "place", t.firstMessage+1, "stored_at", n)
			}
		}
		if err != nil {
			stopRenewing()
			s.release(t, final)
			return err
		}
		added++
	}
	stopRenewing() // the update below releases the lease
	last := s.now()
	first := int32(t.firstMessage)
	_, err := s.o.Store.Update(ctx, t.tenantID, t.sessionID, func(r *sessionstore.Record) error {
		ours := r.Turn != nil && r.Turn.ID == t.turnID
		if !ours && (r.Turn != nil || r.Session.GetMessageCount() > first+1) {
			// Taken over and another turn has begun since: the recovery
			// counted what it found.
			return errLeaseLost
		}
		r.Session.MessageCount = max(r.Session.GetMessageCount(), first+added)
		r.Session.TokensUsed += int32(reply.TokensUsed())
		r.Session.LastMessageAt = timestamppb.New(last)
		r.Session.Mode = t.mode
		r.EventSeq = max(r.EventSeq, final)
		if ours {
			r.Turn = nil
		}
		return nil
	})
	if errors.Is(err, errLeaseLost) && assistant != nil {
		// The lease lapsed (the replica was cut off, or the writes stalled
		// past it), another replica closed the turn and a new turn has
		// begun: its user message may have taken the reply's place, while
		// the reply was still on its way (a spooled write is acknowledged
		// before it reaches JetStream, and is refused there if the place
		// is taken). Tell the caller the reply is stored only if it is.
		return s.confirmReply(ctx, t, assistant)
	}
	if err != nil && !errors.Is(err, errLeaseLost) {
		s.o.Logger.WarnContext(ctx, "reply stored but the session record was not updated", "session_id", t.sessionID, "error", err)
	}
	return nil
}

// leaseHeld reports whether the stored record says t still holds its lease.
func (s *Service) leaseHeld(ctx context.Context, t *turn) bool {
	rec, err := s.o.Store.Get(ctx, t.tenantID, t.sessionID)
	return err == nil && rec.Turn != nil && rec.Turn.ID == t.turnID
}

// confirmReplyWait bounds confirmReply's wait for the reply to be stored
// (at its place, or moved to the end when another message took it).
const confirmReplyWait = 10 * time.Second

// errReplyDisplaced: a taken-over turn's reply lost its place in the
// transcript to the next turn.
var errReplyDisplaced = fmt.Errorf("%w: the turn was taken over and its reply's place in the transcript was taken", sessionstore.ErrUnavailable)

// confirmReply waits until the reply is in the transcript: nil once it
// is (at its place or, its place taken, moved to the end by the replay of
// the spool that holds it), an error if it is not within confirmReplyWait.
func (s *Service) confirmReply(ctx context.Context, t *turn, assistant *sessionsv1.Message) error {
	ctx, cancel := context.WithTimeout(ctx, confirmReplyWait)
	defer cancel()
	n := t.firstMessage + 1
	wait := 50 * time.Millisecond
	for {
		// At its place, or moved to the end by the spool's replay because
		// its place was taken (sessionstore.Resolver): either way stored.
		to := n + 1
		rec, err := s.o.Store.Get(ctx, t.tenantID, t.sessionID)
		if err == nil {
			to = max(to, min(int(rec.Session.GetMessageCount()), n+sessionstore.MaxMessagesRead))
		}
		msgs, err := s.o.Store.Messages(ctx, t.tenantID, t.sessionID, n, to)
		for _, m := range msgs {
			if m.GetId() == assistant.GetId() {
				return nil
			}
		}
		tm := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tm.Stop()
			s.o.Logger.WarnContext(ctx, "a taken-over turn's reply could not be confirmed stored (its place taken, and not moved yet); the caller is told it was not",
				"session_id", t.sessionID, "message", n, "error", err)
			return errReplyDisplaced
		case <-tm.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// release gives up the lease of a turn that could not finish normally,
// recording lastSeq so the next turn's event ids follow this one's.
func (s *Service) release(t *turn, lastSeq uint64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), 10*time.Second)
	defer cancel()
	_, err := s.o.Store.Update(ctx, t.tenantID, t.sessionID, func(r *sessionstore.Record) error {
		if r.Turn != nil && r.Turn.ID == t.turnID {
			r.Turn = nil
		}
		r.EventSeq = max(r.EventSeq, lastSeq)
		return nil
	})
	if err != nil {
		s.o.Logger.WarnContext(ctx, "could not release a turn lease; it lapses by itself", "session_id", t.sessionID, "error", err)
	}
}

// errorTypeInterrupted is the type of the error event that closes a turn
// whose replica died (watchers pass the dead turn's unused ids at it).
const errorTypeInterrupted = "interrupted"

// recover closes a turn whose replica died (its lease lapsed): it stores
// what was served of the reply (the chunks that reached the event stream) as
// a partial reply, appends an error event {type: interrupted} after the
// dead turn's reserved ids, fixes message_count, and meters the partial
// reply (its tokens and its session.message). Several replicas may race to do it; the record's
// compare-and-set lets one win, and the others find no lapsed turn.
func (s *Service) recover(ctx context.Context, tenantID string, rec *sessionstore.Record) error {
	dead := *rec.Turn
	first := int(dead.FirstMessage)
	stored, err := s.o.Store.Messages(ctx, tenantID, rec.Session.GetId(), first, first+2)
	if err != nil {
		return storeError(err)
	}
	var user, assistant *sessionsv1.Message
	for _, m := range stored {
		switch m.GetRole() {
		case sessionsv1.Role_ROLE_USER:
			user = m
		case sessionsv1.Role_ROLE_ASSISTANT:
			assistant = m
		}
	}
	var partial *sessionsv1.Message
	if user != nil && assistant == nil {
		if served := s.servedText(ctx, rec.Session.GetId(), rec.EventSeq, dead.EventCeiling); served != "" {
			partial = &sessionsv1.Message{
				Id: uuid.NewSHA1(uuid.NameSpaceOID, []byte("interrupted:"+dead.ID)).String(), SessionId: rec.Session.GetId(),
				Role: sessionsv1.Role_ROLE_ASSISTANT, Content: served, TokensUsed: int32(soul.EstimateTokens(served)),
				CreatedAt: timestamppb.New(s.now()),
			}
		}
	}
	count := int32(first)
	if user != nil {
		count++
	}
	if assistant != nil || partial != nil {
		count++
	}
	interrupted := max(rec.EventSeq, dead.EventCeiling) + 1
	// Close the turn first, then store the partial reply: only the replica
	// that closed it writes, and a turn that was alive after all (its
	// renewal read late from a lagging follower) is left alone.
	won := false
	_, err = s.o.Store.Update(ctx, tenantID, rec.Session.GetId(), func(r *sessionstore.Record) error {
		won = false
		if r.Turn == nil || r.Turn.ID != dead.ID || !s.leaseLapsed(r.Turn) {
			// Someone else closed it, it finished after all, or its replica
			// renewed the lease after all: not ours to close.
			return nil
		}
		won = true
		// After every id the turn reserved, as stored now: it may have
		// extended its reservation since rec was read.
		interrupted = max(r.EventSeq, r.Turn.EventCeiling, dead.EventCeiling) + 1
		r.Turn = nil
		r.Session.MessageCount = max(r.Session.GetMessageCount(), count)
		if partial != nil {
			r.Session.TokensUsed += partial.GetTokensUsed()
			r.Session.LastMessageAt = partial.GetCreatedAt()
		}
		r.EventSeq = max(r.EventSeq, interrupted)
		return nil
	})
	if err != nil {
		return storeError(err)
	}
	if !won {
		return nil
	}
	if partial != nil {
		// Write-once: if the dead turn's own reply reached the transcript
		// after all, it keeps its place and the partial is not needed.
		if err := s.o.Store.AppendMessage(ctx, tenantID, first+1, partial); err != nil {
			s.o.Logger.WarnContext(ctx, "could not store an interrupted turn's partial reply", "session_id", rec.Session.GetId(), "error", err)
			partial = nil
		}
	}
	s.o.Logger.WarnContext(ctx, "closed a turn whose replica stopped renewing its lease",
		"session_id", rec.Session.GetId(), "replica", dead.Replica, "user_message_stored", user != nil, "partial_reply_chars", len(partial.GetContent()))
	s.publish(ctx, tenantID, &sessionsv1.SessionEvent{
		Id: strconv.FormatUint(interrupted, 10), SessionId: rec.Session.GetId(), Time: timestamppb.New(s.now()),
		Payload: &sessionsv1.SessionEvent_Error{Error: &soulv1.DialogueError{
			Error: "the turn was interrupted (the server running it stopped); what was served of the reply is stored", Type: errorTypeInterrupted}},
	}, dead.Started)
	if partial != nil {
		// What was served is billed as a finished turn's reply would be:
		// its tokens, and the stored (partial) message. The dead turn's
		// own record held neither (a turn records them when it stores
		// its reply), so nothing is billed twice.
		metering.RecordTokens(ctx, metering.TokenUsage{
			TokensOut: int(partial.GetTokensUsed()), Model: "interrupted", SessionID: rec.Session.GetId(),
			Mode: apijson.EnumString(soulv1.Mode(dead.Mode)), Budget: apijson.EnumString(soulv1.Budget(dead.Budget)),
		})
		metering.RecordSession(ctx, metering.SessionUsage{SessionID: rec.Session.GetId(), Role: "assistant", MessageLength: utf8.RuneCountInString(partial.GetContent())})
	}
	return nil
}

// servedText rebuilds what a dead turn streamed from its chunk events in
// the event history (ids after lastSeq up to its reservation).
func (s *Service) servedText(ctx context.Context, sessionID string, lastSeq, ceiling uint64) string {
	if s.o.Watch == nil {
		return ""
	}
	var b strings.Builder
	err := s.o.Watch.Replay(ctx, sessionID, lastSeq, ceiling, nil, func(ev *sessionsv1.SessionEvent) error {
		if seq, _ := strconv.ParseUint(ev.GetId(), 10, 64); seq > ceiling {
			return errStopReplay
		}
		if c := ev.GetChunk(); c != nil {
			b.WriteString(c.GetText())
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopReplay) {
		s.o.Logger.WarnContext(ctx, "could not read what an interrupted turn served; storing none of it", "session_id", sessionID, "error", err)
		return ""
	}
	return b.String()
}

var errStopReplay = errors.New("stop replay")

// history returns earlier messages for an engine that uses context.
func (s *Service) history(ctx context.Context, t *turn, currentID string) []soul.Turn {
	msgs, err := sessionstore.LastMessages(ctx, s.o.Store, t.tenantID, t.sessionID, t.firstMessage, s.o.HistoryMessages)
	if err != nil {
		s.o.Logger.WarnContext(ctx, "history unavailable; answering without it", "session_id", t.sessionID, "error", err)
		return nil
	}
	out := make([]soul.Turn, 0, len(msgs))
	for _, m := range msgs {
		if m.GetId() == currentID {
			continue
		}
		role := "user"
		if m.GetRole() == sessionsv1.Role_ROLE_ASSISTANT {
			role = "assistant"
		}
		out = append(out, soul.Turn{Role: role, Content: m.GetContent()})
	}
	return out
}
