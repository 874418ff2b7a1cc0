package sessionsvc

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/soul"
	"github.com/kgents/kgents-go/tenancy"
)

// spoolingStore is the store as a replica cut off from JetStream sees it
// (sessionstore.Resilient in outage mode): an assistant message's write is
// acknowledged at once and reaches the shared store only when flush is
// called, as a spooled write is replayed; and once such a write is held,
// record updates wait for release (the stalled writes of an election).
type spoolingStore struct {
	*sessionstore.Memory
	blocked chan struct{} // closed when an update first waits
	release chan struct{} // closed to let updates through

	mu        sync.Mutex
	held      []func() error
	blockOnce sync.Once
}

func (s *spoolingStore) AppendMessage(ctx context.Context, tenantID string, n int, m *sessionsv1.Message) error {
	if m.GetRole() != sessionsv1.Role_ROLE_ASSISTANT {
		return s.Memory.AppendMessage(ctx, tenantID, n, m)
	}
	s.mu.Lock()
	s.held = append(s.held, func() error { return s.Memory.AppendMessage(context.Background(), tenantID, n, m) })
	s.mu.Unlock()
	return nil
}

func (s *spoolingStore) Update(ctx context.Context, tenantID, sessionID string, fn func(*sessionstore.Record) error) (*sessionstore.Record, error) {
	s.mu.Lock()
	holding := len(s.held) > 0
	s.mu.Unlock()
	if holding {
		s.blockOnce.Do(func() { close(s.blocked) })
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Memory.Update(ctx, tenantID, sessionID, fn)
}

// flush replays the held writes; the first error is returned.
func (s *spoolingStore) flush() error {
	s.mu.Lock()
	held := s.held
	s.held = nil
	s.mu.Unlock()
	var first error
	for _, w := range held {
		if err := w(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// clock is a settable clock shared by the two replicas.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// A turn whose replica is cut off writes its reply into the spool (an
// immediate acknowledgement), then stalls on the record's update past its
// lease. Another replica closes the turn and runs the next one, whose user
// message takes the reply's place; the spooled reply is refused when it is
// replayed. The first turn's caller must not be told its reply is stored:
// it gets UNAVAILABLE, and the next turn is unaffected.
func TestTakenOverTurnDoesNotAcknowledgeADisplacedReply(t *testing.T) {
	t.Parallel()
	mem := sessionstore.NewMemory()
	spool := &spoolingStore{Memory: mem, blocked: make(chan struct{}), release: make(chan struct{})}
	clk := &clock{}
	clk.ns.Store(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC).UnixNano())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts := func(store sessionstore.Store, replica string) Options {
		return Options{Store: store, Engine: soul.NewTemplateEngine(), Replica: replica, TurnLease: time.Hour,
			TurnTimeout: time.Minute, Logger: log, Now: clk.now}
	}
	a, b := New(opts(spool, "a")), New(opts(mem, "b"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = tenancy.WithIdentity(ctx, &tenancy.Identity{TenantID: "t1", Tier: tenancy.TierPro, Limits: tenancy.DefaultTiers()[tenancy.TierPro]})
	created, err := b.CreateSession(ctx, &sessionsv1.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetSession().GetId()

	firstDone := make(chan error, 1)
	go func() {
		_, err := a.SendMessage(ctx, &sessionsv1.SendMessageRequest{SessionId: id, Message: "first"})
		firstDone <- err
	}()
	select {
	case <-spool.blocked:
	case <-ctx.Done():
		t.Fatal("the first turn never reached its record update")
	}
	// The lease (an hour, never renewed on this clock) lapses for
	// everyone; the next send, on the other replica, closes the turn and
	// runs its own.
	clk.advance(2 * time.Hour)
	second, err := b.SendMessage(ctx, &sessionsv1.SendMessageRequest{SessionId: id, Message: "second"})
	if err != nil {
		t.Fatalf("the next turn: %v", err)
	}
	close(spool.release)
	err = <-firstDone
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("the taken-over turn answered %v; want UNAVAILABLE (its reply lost its place)", err)
	}
	if err := spool.flush(); err == nil {
		t.Fatal("the spooled reply was stored after all: the test no longer displaces it")
	}
	msgs, err := mem.Messages(ctx, "t1", id, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, m.GetRole().String()+":"+m.GetId())
	}
	if len(msgs) != 3 || msgs[1].GetContent() != "second" || msgs[2].GetId() != second.GetMessage().GetId() {
		t.Errorf("transcript %v: want the first user message, then the second turn", got)
	}
}

// replayingStore is the shared store as a live turn sees it while another
// replica's spool is replayed: just before the turn's reply is written, a
// message spooled during an outage lands at the reply's place.
type replayingStore struct {
	*sessionstore.Memory
	once sync.Once
}

func (s *replayingStore) AppendMessage(ctx context.Context, tenantID string, n int, m *sessionsv1.Message) error {
	if m.GetRole() == sessionsv1.Role_ROLE_ASSISTANT {
		s.once.Do(func() {
			late := &sessionsv1.Message{Id: "late", SessionId: m.GetSessionId(), Role: sessionsv1.Role_ROLE_ASSISTANT, Content: "replayed late"}
			_ = s.Memory.AppendMessage(ctx, tenantID, n, late)
		})
	}
	return s.Memory.AppendMessage(ctx, tenantID, n, m)
}

// A turn that still holds its lease when its reply's place turns out taken
// stores the reply at the end of the transcript and answers it: both
// messages are kept, and the next turn starts after them.
func TestReplyWhosePlaceWasTakenGoesToTheEnd(t *testing.T) {
	t.Parallel()
	store := &replayingStore{Memory: sessionstore.NewMemory()}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := New(Options{Store: store, Engine: soul.NewTemplateEngine(), Replica: "a", TurnLease: time.Minute,
		TurnTimeout: time.Minute, Logger: log})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = tenancy.WithIdentity(ctx, &tenancy.Identity{TenantID: "t1", Tier: tenancy.TierPro, Limits: tenancy.DefaultTiers()[tenancy.TierPro]})
	created, err := svc.CreateSession(ctx, &sessionsv1.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetSession().GetId()
	first, err := svc.SendMessage(ctx, &sessionsv1.SendMessageRequest{SessionId: id, Message: "first"})
	if err != nil {
		t.Fatalf("the turn whose reply place was taken: %v", err)
	}
	if _, err := svc.SendMessage(ctx, &sessionsv1.SendMessageRequest{SessionId: id, Message: "second"}); err != nil {
		t.Fatalf("the next turn: %v", err)
	}
	msgs, err := store.Messages(ctx, "t1", id, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, m.GetContent())
	}
	if len(msgs) != 5 || msgs[1].GetId() != "late" || msgs[2].GetId() != first.GetMessage().GetId() || msgs[3].GetContent() != "second" {
		t.Errorf("transcript %q: want first, the late message, the first reply, then the second turn", got)
	}
	sess, err := svc.GetSession(ctx, &sessionsv1.GetSessionRequest{SessionId: id})
	if err != nil || sess.GetSession().GetMessageCount() != 5 {
		t.Errorf("message_count %d (%v), want 5", sess.GetSession().GetMessageCount(), err)
	}
}

// lapsingStore lets a turn's lease lapse between a read and the update
// that follows it: each Update first advances the clock.
type lapsingStore struct {
	*sessionstore.Memory
	clk  *clock
	step time.Duration
}

func (s *lapsingStore) Update(ctx context.Context, tenantID, sessionID string, fn func(*sessionstore.Record) error) (*sessionstore.Record, error) {
	s.clk.advance(s.step)
	return s.Memory.Update(ctx, tenantID, sessionID, fn)
}

// recordedEvents is an EventSink keeping what it is given.
type recordedEvents struct {
	mu  sync.Mutex
	evs []*sessionsv1.SessionEvent
}

func (r *recordedEvents) Publish(_ context.Context, _ string, ev *sessionsv1.SessionEvent, _ time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
}

// deadTurnSession is a session on replica b whose turn another replica
// ("a") began and stopped renewing: its lease (10 s) and reservation (up
// to id 4096) as stored. store wraps mem for the service.
func deadTurnSession(t *testing.T, clk *clock, mem *sessionstore.Memory, store sessionstore.Store, events EventSink) (*Service, context.Context, string) {
	t.Helper()
	clk.ns.Store(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC).UnixNano())
	svc := New(Options{Store: store, Engine: soul.NewTemplateEngine(),
		Replica: "b", TurnLease: 10 * time.Second, TurnTimeout: time.Minute, Events: events,
		Logger: slog.New(slog.DiscardHandler), Now: clk.now})
	ctx := tenancy.WithIdentity(context.Background(), &tenancy.Identity{TenantID: "t1", Tier: tenancy.TierPro, Limits: tenancy.DefaultTiers()[tenancy.TierPro]})
	created, err := svc.CreateSession(ctx, &sessionsv1.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetSession().GetId()
	if _, err := mem.Update(ctx, "t1", id, func(r *sessionstore.Record) error {
		r.Turn = &sessionstore.Turn{ID: "dead", Started: clk.now(), Replica: "a", Expires: clk.now().Add(10 * time.Second), EventCeiling: 4096}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return svc, ctx, id
}

// A close that reads a live lease, which lapses before its update, must
// not close the session over the dead turn: its ids are reserved, and
// the end event would take one of them. It is refused (retry); the retry
// closes the turn (interrupted marker after its ids), then the session.
func TestCloseSessionAsALeaseLapses(t *testing.T) {
	t.Parallel()
	clk, mem, events := &clock{}, sessionstore.NewMemory(), &recordedEvents{}
	// The dead turn's lease is live when the close reads it, lapsed at the
	// close's update (each update moves the clock 6 s).
	svc, ctx, id := deadTurnSession(t, clk, mem, &lapsingStore{Memory: mem, clk: clk, step: 6 * time.Second}, events)
	clk.advance(5 * time.Second)
	_, err := svc.CloseSession(ctx, &sessionsv1.CloseSessionRequest{SessionId: id})
	if status.Code(err) != codes.Aborted {
		t.Fatalf("close over a lease lapsing meanwhile = %v, want ABORTED (retry)", err)
	}
	if rec, _ := mem.Get(ctx, "t1", id); rec.Turn == nil || rec.Session.GetStatus() == sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
		t.Fatalf("the refused close changed the record: %+v", rec)
	}
	if _, err := svc.CloseSession(ctx, &sessionsv1.CloseSessionRequest{SessionId: id}); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	events.mu.Lock()
	defer events.mu.Unlock()
	if len(events.evs) != 2 || events.evs[0].GetError().GetType() != errorTypeInterrupted || events.evs[0].GetId() != "4097" ||
		events.evs[1].GetEnd() == nil || events.evs[1].GetId() != "4098" {
		t.Fatalf("events %v, want the interrupted marker 4097 then the end 4098", events.evs)
	}
}

// extendingStore extends the turn's reservation when its transcript is
// read, as a dead turn's replica still running would between a recovery's
// read of the record and its update.
type extendingStore struct {
	*sessionstore.Memory
	to uint64
}

func (s *extendingStore) Messages(ctx context.Context, tenantID, sessionID string, from, to int) ([]*sessionsv1.Message, error) {
	if _, err := s.Memory.Update(ctx, tenantID, sessionID, func(r *sessionstore.Record) error {
		if r.Turn != nil {
			r.Turn.EventCeiling = max(r.Turn.EventCeiling, s.to)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return s.Memory.Messages(ctx, tenantID, sessionID, from, to)
}

// The interrupted marker goes after every id the dead turn reserved as
// stored when the turn is closed, not as read before.
func TestInterruptedMarkerAfterAnExtendedReservation(t *testing.T) {
	t.Parallel()
	clk, mem, events := &clock{}, sessionstore.NewMemory(), &recordedEvents{}
	svc, ctx, id := deadTurnSession(t, clk, mem, &extendingStore{Memory: mem, to: 8192}, events)
	clk.advance(time.Minute)
	if _, err := svc.CloseSession(ctx, &sessionsv1.CloseSessionRequest{SessionId: id}); err != nil {
		t.Fatal(err)
	}
	events.mu.Lock()
	defer events.mu.Unlock()
	if len(events.evs) != 2 || events.evs[0].GetId() != "8193" || events.evs[1].GetId() != "8194" {
		t.Fatalf("events %v, want the interrupted marker 8193 and the end 8194", events.evs)
	}
}
