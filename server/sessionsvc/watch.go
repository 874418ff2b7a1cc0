package sessionsvc

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/interceptors"
)

// Watch is where watchers get a session's events: live ones from this
// process's hub, and the retained history. The service does not know it is
// NATS (server wiring adapts the streaming package).
type Watch interface {
	// Subscribe starts a feed of the session's live events.
	Subscribe(sessionID string) Feed
	// Replay delivers retained events newer than after, in order, until
	// caught up; onReset runs first if the events after `after` are gone.
	// It returns ErrNoHistory (wrapped) when history cannot be read.
	Replay(ctx context.Context, sessionID string, after uint64, onReset func() error, deliver func(*sessionsv1.SessionEvent) error) error
}

// Feed is one watcher's live events.
type Feed interface {
	Events() <-chan *sessionsv1.SessionEvent
	// Lagged reports (and clears) that events were dropped for this feed.
	Lagged() bool
	Close()
}

// ErrNoHistory is what Replay wraps when there is no history to read.
var ErrNoHistory = errors.New("no history")

// watchers counts open watch streams per tenant.
type watchers struct {
	mu  sync.Mutex
	n   map[string]int
	cap int
}

func (w *watchers) acquire(tenant string) (release func(), ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == nil {
		w.n = map[string]int{}
	}
	if w.cap > 0 && w.n[tenant] >= w.cap {
		return nil, false
	}
	w.n[tenant]++
	var once sync.Once
	return func() {
		once.Do(func() {
			w.mu.Lock()
			w.n[tenant]--
			if w.n[tenant] == 0 {
				delete(w.n, tenant)
			}
			w.mu.Unlock()
		})
	}, true
}

func parseAfter(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, status.Error(codes.InvalidArgument, "after (Last-Event-ID) must be an event id from this session's stream")
	}
	return n, nil
}

// WatchSession streams a session's events: its retained history after the
// requested point, then live events from any replica, until the session
// closes (end), the server shuts down (end) or the caller leaves.
func (s *Service) WatchSession(req *sessionsv1.WatchSessionRequest, stream grpc.ServerStreamingServer[sessionsv1.WatchSessionResponse]) error {
	ctx := stream.Context()
	id, err := caller(ctx)
	if err != nil {
		return err
	}
	after, err := parseAfter(req.GetAfter())
	if err != nil {
		return err
	}
	rec, err := s.o.Store.Get(ctx, id.TenantID, req.GetSessionId())
	if err != nil {
		return storeError(err)
	}
	if s.o.Watch == nil {
		return status.Error(codes.Unimplemented, "watching is not available on this server")
	}
	release, ok := s.watch.acquire(id.TenantID)
	if !ok {
		st := status.Newf(codes.ResourceExhausted, "Too many open watch streams for this tenant (limit %d); close one or retry later", s.watch.cap)
		if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(5 * time.Second)}); err == nil {
			st = d
		}
		return st.Err()
	}
	defer release()

	// Subscribe before replaying, so nothing published meanwhile is missed;
	// what arrives both ways is sent once (by id).
	feed := s.o.Watch.Subscribe(req.GetSessionId())
	defer feed.Close()
	if err := interceptors.OpenStream(stream); err != nil {
		return err
	}
	w := &watcher{stream: stream, last: after, sessionID: req.GetSessionId()}
	if err := w.catchUp(ctx, s.o.Watch); err != nil {
		return err
	}
	if w.ended {
		return nil
	}
	if rec.Session.GetStatus() == sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
		return w.end("session_closed")
	}
	for {
		select {
		case ev := <-feed.Events():
			if err := w.send(ev); err != nil {
				return err
			}
			if w.ended {
				return nil
			}
			if feed.Lagged() {
				if err := w.catchUp(ctx, s.o.Watch); err != nil {
					return err
				}
				if w.ended {
					return nil
				}
			}
		case <-s.o.Stopping:
			return w.end("shutdown")
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// watcher sends one watch stream's events, each once, in id order.
type watcher struct {
	stream    grpc.ServerStreamingServer[sessionsv1.WatchSessionResponse]
	sessionID string
	last      uint64
	ended     bool
}

func (w *watcher) send(ev *sessionsv1.SessionEvent) error {
	seq, _ := strconv.ParseUint(ev.GetId(), 10, 64)
	if seq != 0 && seq <= w.last {
		return nil // already sent (history and live overlap)
	}
	if err := w.stream.Send(&sessionsv1.WatchSessionResponse{Event: ev}); err != nil {
		return err
	}
	if seq > w.last {
		w.last = seq
	}
	if _, ok := ev.GetPayload().(*sessionsv1.SessionEvent_End); ok {
		w.ended = true
	}
	return nil
}

// catchUp replays history after the last event sent. Without history (NATS
// away or disabled) the watch goes on with live events only.
func (w *watcher) catchUp(ctx context.Context, watch Watch) error {
	err := watch.Replay(ctx, w.sessionID, w.last, func() error {
		w.last = 0
		return w.stream.Send(&sessionsv1.WatchSessionResponse{Event: &sessionsv1.SessionEvent{
			SessionId: w.sessionID,
			Payload:   &sessionsv1.SessionEvent_Reset_{Reset_: &sessionsv1.ResetEvent{Reason: "not_retained"}},
		}})
	}, w.send)
	if err != nil && !errors.Is(err, ErrNoHistory) {
		return err
	}
	return nil
}

func (w *watcher) end(reason string) error {
	return w.stream.Send(&sessionsv1.WatchSessionResponse{Event: &sessionsv1.SessionEvent{
		SessionId: w.sessionID,
		Payload:   &sessionsv1.SessionEvent_End{End: &sessionsv1.EndEvent{Reason: reason}},
	}})
}
