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

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/interceptors/statuserr"
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
	// TurnTimeout bounds a turn.
	TurnTimeout time.Duration
	// TurnLease is how long a turn's lease lasts unless renewed (every third
	// of it while the turn runs): a replica that dies mid-turn blocks its
	// session for at most this long. Default 10s.
	TurnLease time.Duration
	// TurnCutoff, when it closes, cuts the turns still running (the
	// shutdown deadline is near): each stores and bills what it produced and
	// ends with an error event of type shutdown.
	TurnCutoff <-chan struct{}
	// HistoryMessages is how many earlier messages an LLM engine sees.
	HistoryMessages int
	// Events receives every event of every turn, in order, for watchers on
	// any replica (the fan-out publisher); nil drops them.
	Events EventSink
	// Watch serves WatchSession; Stopping closes when watch streams must
	// end; WatchersPerTenant caps a tenant's open watch streams (0: no cap).
	Watch             Watch
	Stopping          <-chan struct{}
	WatchersPerTenant int
	// WatchGapWait bounds how long a watcher waits for the events before a
	// gap in a session's ids (0: DefaultWatchGapWait).
	WatchGapWait time.Duration
	Logger       *slog.Logger
	Now          func() time.Time
}

// EventSink takes a session's events for its watchers (fanout.Publisher:
// this replica's hub and JetStream). Publish must not block on the network.
type EventSink interface {
	// Publish takes ev; turnStarted is when the turn that made it began
	// (zero: not a turn's event), which history reads need (see
	// streaming.HeaderTurnStarted).
	Publish(ctx context.Context, tenantID string, ev *sessionsv1.SessionEvent, turnStarted time.Time)
}

// publish hands ev to the event sink.
func (s *Service) publish(ctx context.Context, tenantID string, ev *sessionsv1.SessionEvent, turnStarted time.Time) {
	if s.o.Events != nil {
		s.o.Events.Publish(ctx, tenantID, ev, turnStarted)
	}
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
	if o.TurnLease <= 0 {
		o.TurnLease = 10 * time.Second
	}
	if o.HistoryMessages <= 0 {
		o.HistoryMessages = 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.WatchGapWait == 0 {
		o.WatchGapWait = DefaultWatchGapWait
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
		return statuserr.WithRetry(codes.Unavailable, "session storage is unavailable; retry shortly", 5*time.Second)
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
// It carries a retry delay (REST: Retry-After): besides a client's own
// overlapping sends, a session can look busy for a few seconds after its
// turn's reply was acknowledged — when a replica finished the turn from
// its spool during a NATS failover (docs/streaming.md, "Outage mode"), the
// lease's release reaches the other replicas when the spool replays.
var errTurnInFlight = statuserr.WithRetry(codes.Aborted, "A message is already being processed for this session; retry when it completes", time.Second)

var errClosed = status.Error(codes.FailedPrecondition, "Session is closed; it takes no new messages")

// CloseSession closes a session; watchers get an end event.
func (s *Service) CloseSession(ctx context.Context, req *sessionsv1.CloseSessionRequest) (*sessionsv1.CloseSessionResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if rec, err := s.o.Store.Get(ctx, id.TenantID, req.GetSessionId()); err != nil {
		return nil, storeError(err)
	} else if rec.Turn != nil && s.leaseLapsed(rec.Turn) {
		if err := s.recover(ctx, id.TenantID, rec); err != nil {
			return nil, err
		}
	}
	var endSeq uint64
	rec, err := s.o.Store.Update(ctx, id.TenantID, req.GetSessionId(), func(r *sessionstore.Record) error {
		endSeq = 0
		if r.Session.GetStatus() == sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
			return nil
		}
		if r.Turn != nil {
			// Busy, or lapsed since the read above and closed by nobody
			// yet: its ids are reserved, and recovery must close it first
			// (the retry does).
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
		s.publish(ctx, id.TenantID, &sessionsv1.SessionEvent{
			Id: strconv.FormatUint(endSeq, 10), SessionId: req.GetSessionId(), Time: timestamppb.New(s.now()),
			Payload: &sessionsv1.SessionEvent_End{End: &sessionsv1.EndEvent{Reason: "session_closed"}},
		}, time.Time{})
	}
	return &sessionsv1.CloseSessionResponse{Session: rec.Session}, nil
}

// ListMessages returns a page of the transcript, read by message number in
// O(page). message_count counts the messages before the turn in flight; the
// total also counts that turn's messages already stored.
func (s *Service) ListMessages(ctx context.Context, req *sessionsv1.ListMessagesRequest) (*sessionsv1.ListMessagesResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	rec, err := s.o.Store.Get(ctx, id.TenantID, req.GetSessionId())
	if err != nil {
		return nil, storeError(err)
	}
	limit := 50
	if req.Limit != nil {
		limit = int(req.GetLimit())
	}
	offset := int(req.GetOffset())
	count := int(rec.Session.GetMessageCount())
	total := count
	if rec.Turn != nil {
		// At most two more (the turn's user message and reply).
		tail, err := s.o.Store.Messages(ctx, id.TenantID, req.GetSessionId(), count, count+2)
		if err != nil {
			return nil, storeError(err)
		}
		total += len(tail)
	}
	msgs := []*sessionsv1.Message{}
	if end := min(offset+limit, total); offset < end {
		if msgs, err = s.o.Store.Messages(ctx, id.TenantID, req.GetSessionId(), offset, end); err != nil {
			return nil, storeError(err)
		}
	}
	return &sessionsv1.ListMessagesResponse{Messages: msgs, Total: int32(total), SessionId: req.GetSessionId()}, nil
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
