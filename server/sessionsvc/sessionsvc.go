// Package sessionsvc is the Sessions gRPC service: a tenant's persistent
// K-gent conversations. A turn (one user message and K-gent's reply) is
// validated completely before anything is written, holds the session's turn
// marker (one turn in flight per session, across replicas), and runs to its
// end on a context detached from the caller: a caller that goes away still
// gets its reply stored, metered and fanned out. The reply's complete event
// is sent only once the reply is stored.
package sessionsvc

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/fanout"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/server/soulsvc"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/soul"
	"github.com/kgents/kgents-go/tenancy"
)

// Options configure the service.
type Options struct {
	Store  sessionstore.Store
	Engine soul.Engine
	// Replica names this process in turn markers.
	Replica string
	// TurnTimeout bounds a turn; a turn marker older than this (plus a
	// minute's grace) belongs to a replica that died and may be taken over.
	TurnTimeout time.Duration
	// HistoryMessages is how many earlier messages an LLM engine sees.
	HistoryMessages int
	// Watch serves WatchSession; Stopping closes when watch streams must
	// end; WatchersPerTenant caps a tenant's open watch streams (0: no cap).
	Watch             Watch
	Stopping          <-chan struct{}
	WatchersPerTenant int
	Logger            *slog.Logger
	Now               func() time.Time
}

// Service implements sessionsv1.SessionsServiceServer.
type Service struct {
	sessionsv1.UnimplementedSessionsServiceServer
	o     Options
	turns sync.WaitGroup
	watch watchers
}

// New returns the service.
func New(o Options) *Service {
	if o.TurnTimeout <= 0 {
		o.TurnTimeout = 150 * time.Second
	}
	if o.HistoryMessages <= 0 {
		o.HistoryMessages = 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Replica == "" {
		o.Replica = "kgentsd"
	}
	return &Service{o: o, watch: watchers{cap: o.WatchersPerTenant}}
}

// WaitTurns waits for turns in flight to end, or for ctx.
func (s *Service) WaitTurns(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.turns.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Service) now() time.Time { return s.o.Now().UTC() }

func caller(ctx context.Context) (*tenancy.Identity, error) {
	id := tenancy.IdentityFrom(ctx)
	if id == nil {
		return nil, status.Error(codes.Unauthenticated, "no caller identity")
	}
	return id, nil
}

// storeError maps a store failure to a status the caller can act on.
func storeError(err error) error {
	switch {
	case errors.Is(err, sessionstore.ErrNotFound):
		return status.Error(codes.NotFound, "Session not found")
	case errors.Is(err, sessionstore.ErrUnavailable):
		st := status.New(codes.Unavailable, "session storage is unavailable; retry shortly")
		if d, derr := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(5 * time.Second)}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.Is(err, sessionstore.ErrConflict):
		return status.Error(codes.Aborted, "the session changed concurrently; retry")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}

// CreateSession starts a session.
func (s *Service) CreateSession(ctx context.Context, req *sessionsv1.CreateSessionRequest) (*sessionsv1.CreateSessionResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	mode := req.GetMode()
	if mode == soulv1.Mode_MODE_UNSPECIFIED {
		mode = soulv1.Mode_MODE_REFLECT
	}
	agent := req.GetAgentType()
	if agent == "" {
		agent = "kgent"
	}
	sess := &sessionsv1.Session{
		Id:        uuid.NewString(),
		TenantId:  id.TenantID,
		Title:     req.Title,
		AgentType: agent,
		Status:    sessionsv1.SessionStatus_SESSION_STATUS_ACTIVE,
		Mode:      mode,
		CreatedAt: timestamppb.New(s.now()),
	}
	rec, err := s.o.Store.Create(ctx, sess)
	if err != nil {
		return nil, storeError(err)
	}
	metering.RecordSession(ctx, metering.SessionUsage{SessionID: sess.GetId(), AgentType: agent})
	return &sessionsv1.CreateSessionResponse{Session: rec.Session}, nil
}

// ListSessions lists the caller's sessions, newest first.
func (s *Service) ListSessions(ctx context.Context, req *sessionsv1.ListSessionsRequest) (*sessionsv1.ListSessionsResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	limit := 20
	if req.Limit != nil {
		limit = int(req.GetLimit())
	}
	page, total, err := s.o.Store.List(ctx, id.TenantID, int(req.GetOffset()), limit)
	if err != nil {
		return nil, storeError(err)
	}
	return &sessionsv1.ListSessionsResponse{Sessions: page, Total: int32(total)}, nil
}

// GetSession returns one of the caller's sessions.
func (s *Service) GetSession(ctx context.Context, req *sessionsv1.GetSessionRequest) (*sessionsv1.GetSessionResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	rec, err := s.o.Store.Get(ctx, id.TenantID, req.GetSessionId())
	if err != nil {
		return nil, storeError(err)
	}
	return &sessionsv1.GetSessionResponse{Session: rec.Session}, nil
}

// errTurnInFlight refuses a second concurrent turn, and a close during one.
var errTurnInFlight = status.Error(codes.Aborted, "A message is already being processed for this session; retry when it completes")

var errClosed = status.Error(codes.FailedPrecondition, "Session is closed; it takes no new messages")

// turnBusy reports whether r's turn marker is live.
func (s *Service) turnBusy(r *sessionstore.Record) bool {
	return r.Turn != nil && s.now().Sub(r.Turn.Started) < s.o.TurnTimeout+time.Minute
}

// CloseSession closes a session; watchers get an end event.
func (s *Service) CloseSession(ctx context.Context, req *sessionsv1.CloseSessionRequest) (*sessionsv1.CloseSessionResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	var endSeq uint64
	rec, err := s.o.Store.Update(ctx, id.TenantID, req.GetSessionId(), func(r *sessionstore.Record) error {
		endSeq = 0
		if r.Session.GetStatus() == sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
			return nil
		}
		if s.turnBusy(r) {
			return errTurnInFlight
		}
		r.Session.Status = sessionsv1.SessionStatus_SESSION_STATUS_CLOSED
		r.EventSeq++
		endSeq = r.EventSeq
		return nil
	})
	if err != nil {
		return nil, storeError(err)
	}
	if endSeq != 0 {
		fanout.Publish(ctx, id.TenantID, &sessionsv1.SessionEvent{
			Id: strconv.FormatUint(endSeq, 10), SessionId: req.GetSessionId(), Time: timestamppb.New(s.now()),
			Payload: &sessionsv1.SessionEvent_End{End: &sessionsv1.EndEvent{Reason: "session_closed"}},
		})
	}
	return &sessionsv1.CloseSessionResponse{Session: rec.Session}, nil
}

// ListMessages returns a page of the transcript.
func (s *Service) ListMessages(ctx context.Context, req *sessionsv1.ListMessagesRequest) (*sessionsv1.ListMessagesResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.o.Store.Get(ctx, id.TenantID, req.GetSessionId()); err != nil {
		return nil, storeError(err)
	}
	limit := 50
	if req.Limit != nil {
		limit = int(req.GetLimit())
	}
	msgs, total, err := s.o.Store.Messages(ctx, id.TenantID, req.GetSessionId(), int(req.GetOffset()), limit)
	if err != nil {
		return nil, storeError(err)
	}
	return &sessionsv1.ListMessagesResponse{Messages: msgs, Total: int32(total), SessionId: req.GetSessionId()}, nil
}

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
		// After the caller has gone, keep draining: the turn goes on.
		if sendErr == nil {
			sendErr = stream.Send(&sessionsv1.StreamMessageResponse{Event: ev})
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
	cancel       context.CancelFunc
	tenantID     string
	sessionID    string
	turnID       string
	message      string
	mode         soulv1.Mode
	modeChanged  bool
	budget       soulv1.Budget
	seq          uint64
	streamChunks bool
	// open, when set, opens the caller's stream (after the user message is
	// stored); its failure is reported through openErr.
	open    func() error
	openErr error
}

// begin validates and accepts a turn: the session exists, is the caller's
// and is open, the budget is allowed, and no other turn is in flight. Only
// then is anything written (the turn marker).
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
	t := &turn{tenantID: id.TenantID, sessionID: sessionID, turnID: uuid.NewString(), message: message, mode: mode, budget: budget}
	rec, err = s.o.Store.Update(ctx, id.TenantID, sessionID, func(r *sessionstore.Record) error {
		if r.Session.GetStatus() == sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
			return errClosed
		}
		if s.turnBusy(r) {
			return errTurnInFlight
		}
		r.Turn = &sessionstore.Turn{ID: t.turnID, Started: s.now(), Replica: s.o.Replica}
		return nil
	})
	if err != nil {
		return nil, storeError(err)
	}
	t.seq = rec.EventSeq
	t.modeChanged = rec.Session.GetMode() != mode
	t.ctx, t.cancel = context.WithTimeout(context.WithoutCancel(ctx), s.o.TurnTimeout)
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
	defer t.cancel()
	ctx := t.ctx
	emit := func(ev *sessionsv1.SessionEvent, toWatchers bool) {
		if toWatchers {
			fanout.Publish(ctx, t.tenantID, ev)
		}
		if deliver != nil {
			deliver(ev)
		}
	}
	event := func() *sessionsv1.SessionEvent {
		t.seq++
		return &sessionsv1.SessionEvent{Id: strconv.FormatUint(t.seq, 10), SessionId: t.sessionID, Time: timestamppb.New(s.now())}
	}

	user := &sessionsv1.Message{
		Id: uuid.NewString(), SessionId: t.sessionID, Role: sessionsv1.Role_ROLE_USER,
		Content: t.message, CreatedAt: timestamppb.New(s.now()),
	}
	if err := s.o.Store.AppendMessage(ctx, t.tenantID, user); err != nil {
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
		ev := event()
		ev.Payload = &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: c.Text, Index: int32(c.Index)}}
		emit(ev, t.streamChunks)
		return nil
	})
	soulsvc.RecordReply(ctx, reply, t.sessionID)

	var assistant *sessionsv1.Message
	if reply.Text != "" || engineErr == nil {
		assistant = &sessionsv1.Message{
			Id: uuid.NewString(), SessionId: t.sessionID, Role: sessionsv1.Role_ROLE_ASSISTANT,
			Content: reply.Text, TokensUsed: int32(reply.TokensUsed()), CreatedAt: timestamppb.New(s.now()),
		}
	}
	storeErr := s.storeReply(t, assistant, reply)
	final := event()
	switch {
	case storeErr != nil:
		final.Payload = &sessionsv1.SessionEvent_Error{Error: &soulv1.DialogueError{
			Error: "the reply could not be stored; it is not in the history", Type: "storage_error"}}
		res.err = storeError(storeErr)
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

// storeReplyTimeout bounds storing a reply. It has its own deadline: a turn
// that ran into its timeout must still store what it produced.
const storeReplyTimeout = 30 * time.Second

// storeReply stores the reply (partial after an engine failure) and
// finishes the turn: counters, mode, last event id, turn marker cleared.
// It returns an error only when the reply could not be stored; the
// transcript is the source of truth, so a failure to update the counters
// afterwards is logged, not reported.
func (s *Service) storeReply(t *turn, assistant *sessionsv1.Message, reply soul.Reply) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), storeReplyTimeout)
	defer cancel()
	added := int32(1)
	if assistant != nil {
		if err := s.o.Store.AppendMessage(ctx, t.tenantID, assistant); err != nil {
			s.release(t, t.seq+1)
			return err
		}
		added++
	}
	last := s.now()
	_, err := s.o.Store.Update(ctx, t.tenantID, t.sessionID, func(r *sessionstore.Record) error {
		r.Session.MessageCount += added
		r.Session.TokensUsed += int32(reply.TokensUsed())
		r.Session.LastMessageAt = timestamppb.New(last)
		r.Session.Mode = t.mode
		// The final event's id: the one after the last event emitted.
		r.EventSeq = max(r.EventSeq, t.seq+1)
		if r.Turn != nil && r.Turn.ID == t.turnID {
			r.Turn = nil
		}
		return nil
	})
	if err != nil {
		s.o.Logger.WarnContext(ctx, "reply stored but the session record was not updated", "session_id", t.sessionID, "error", err)
		s.release(t, t.seq+1)
	}
	return nil
}

// release clears the turn marker of a turn that could not finish normally,
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
		s.o.Logger.WarnContext(ctx, "could not clear a turn marker; it expires after the turn timeout", "session_id", t.sessionID, "error", err)
	}
}

// history returns earlier messages for an engine that uses context.
func (s *Service) history(ctx context.Context, t *turn, currentID string) []soul.Turn {
	msgs, err := sessionstore.LastMessages(ctx, s.o.Store, t.tenantID, t.sessionID, s.o.HistoryMessages+1)
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

// queue is an unbounded FIFO between a turn and its caller's stream, so a
// slow caller never slows the turn. A reply is bounded (by its budget), so
// the queue is too.
type queue struct {
	mu     sync.Mutex
	items  []*sessionsv1.SessionEvent
	closed bool
	ready  chan struct{}
}

func newQueue() *queue { return &queue{ready: make(chan struct{}, 1)} }

func (q *queue) push(ev *sessionsv1.SessionEvent) {
	q.mu.Lock()
	if ev != nil {
		ev = proto.Clone(ev).(*sessionsv1.SessionEvent)
	}
	q.items = append(q.items, ev)
	q.mu.Unlock()
	q.signal()
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

func (q *queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop waits for the next event; ok is false once the queue is closed and empty.
func (q *queue) pop() (*sessionsv1.SessionEvent, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			ev := q.items[0]
			q.items[0] = nil
			q.items = q.items[1:]
			q.mu.Unlock()
			return ev, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil, false
		}
		<-q.ready
	}
}
