package sessionsvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/statuserr"
)

// Watch is where watchers get a session's events: live ones from this
// process's hub, and the retained history. The service does not know it is
// NATS (server wiring adapts the streaming package).
type Watch interface {
	// Subscribe starts a feed of the session's live events.
	Subscribe(sessionID string) Feed
	// Replay delivers retained events newer than after, in order, until
	// caught up; onReset runs first if the events after `after` are gone,
	// or if after is beyond both the retained events and known (the newest
	// id the caller knows the session reached). It returns ErrNoHistory
	// (wrapped) when this server keeps no history (NATS disabled) and
	// ErrHistoryUnavailable (wrapped) when history cannot be read now.
	Replay(ctx context.Context, sessionID string, after, known uint64, onReset func() error, deliver func(*sessionsv1.SessionEvent) error) error
}

// Feed is one watcher's live events.
type Feed interface {
	Events() <-chan *sessionsv1.SessionEvent
	// Lagged reports (and clears) that events were dropped for this feed.
	Lagged() bool
	Close()
}

// Errors Replay wraps: no history kept at all (live events only), or
// history kept but unreadable now (NATS away).
var (
	ErrNoHistory          = errors.New("no history")
	ErrHistoryUnavailable = errors.New("session history is unavailable")
)

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
		return statuserr.WithRetry(codes.ResourceExhausted,
			fmt.Sprintf("Too many open watch streams for this tenant (limit %d); close one or retry later", s.watch.cap), 5*time.Second)
	}
	defer release()

	// Subscribe before replaying, so nothing published meanwhile is missed;
	// what arrives both ways is sent once (by id). The stream opens with
	// the first event sent (or after the replay): a watch whose history
	// cannot be read fails with 503 rather than silently missing it.
	feed := s.o.Watch.Subscribe(req.GetSessionId())
	defer feed.Close()
	w := &watcher{stream: stream, last: after, sessionID: req.GetSessionId(), watch: s.o.Watch, stopping: s.o.Stopping, log: s.o.Logger, gapWait: s.o.WatchGapWait}
	known := rec.EventSeq
	if rec.Turn != nil {
		known = max(known, rec.Turn.EventCeiling)
	}
	if err := w.catchUp(ctx, known, 0); err != nil {
		if errors.Is(err, ErrHistoryUnavailable) && !w.opened {
			return historyUnavailable()
		}
		return w.stop(err)
	}
	if err := w.open(); err != nil {
		return err
	}
	if w.ended {
		return nil
	}
	if rec.Session.GetStatus() == sessionsv1.SessionStatus_SESSION_STATUS_CLOSED {
		return w.end("session_closed")
	}
	// One more look at history once the subscription's interest has
	// reached every NATS node: an event published elsewhere between the
	// replay and then is in history, and may be the session's last for a
	// while (no later live event would reveal the gap).
	settle := time.NewTimer(watchSettle)
	defer settle.Stop()
	for {
		select {
		case <-settle.C:
			// A precaution, not a read the watch depends on: with history
			// unreadable (NATS away) nothing published elsewhere could be
			// read anyway, and the hub still delivers this replica's events.
			if err := w.catchUp(ctx, w.last, 0); err != nil && !errors.Is(err, ErrHistoryUnavailable) {
				return w.stop(err)
			}
			if w.ended {
				return nil
			}
		case ev := <-feed.Events():
			if seq, _ := strconv.ParseUint(ev.GetId(), 10, 64); seq > w.last+1 {
				// Event ids are contiguous per session, so an id beyond the
				// next is a gap: on a NATS cluster a subscription's interest
				// reaches the publishing node a moment after the history
				// read, two replicas' turns can arrive out of order, and a
				// replica that spooled through an outage stores its events
				// late. What history holds before it is sent first, waiting
				// for what it does not hold yet. An interrupted turn's
				// marker follows ids its dead replica never published: it
				// waits for nothing after history has been read.
				upto := seq
				if interruptedMarker(ev) {
					upto = 0
				}
				if err := w.catchUp(ctx, seq, upto); err != nil {
					return w.stop(err)
				}
				if w.ended {
					return nil
				}
			}
			if err := w.send(ev); err != nil {
				return err
			}
			if w.ended {
				return nil
			}
			if feed.Lagged() {
				if err := w.catchUp(ctx, w.last, 0); err != nil {
					return w.stop(err)
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

func historyUnavailable() error {
	return statuserr.WithRetry(codes.Unavailable, "session history cannot be read right now; retry shortly", 5*time.Second)
}

// watcher sends one watch stream's events, each once, in id order: an
// event after a gap in the ids waits (up to gapWait) for the events
// before it.
type watcher struct {
	stream    grpc.ServerStreamingServer[sessionsv1.WatchSessionResponse]
	watch     Watch
	stopping  <-chan struct{}
	log       *slog.Logger
	gapWait   time.Duration
	sessionID string
	last      uint64 // the id last sent
	allow     uint64 // ids up to this one may follow a gap (one given up on)
	noHistory bool   // no history kept (NATS disabled): gaps cannot be filled
	opened    bool
	ended     bool
}

// gapError is an event read from history after a gap in the ids.
type gapError struct{ next uint64 }

func (e *gapError) Error() string {
	return "gap in the session's event ids before " + strconv.FormatUint(e.next, 10)
}

func (w *watcher) open() error {
	if w.opened {
		return nil
	}
	w.opened = true
	return interceptors.OpenStream(w.stream)
}

func (w *watcher) raw(ev *sessionsv1.SessionEvent) error {
	if err := w.open(); err != nil {
		return err
	}
	return w.stream.Send(&sessionsv1.WatchSessionResponse{Event: ev})
}

func (w *watcher) send(ev *sessionsv1.SessionEvent) error {
	seq, _ := strconv.ParseUint(ev.GetId(), 10, 64)
	if seq != 0 && seq <= w.last {
		return nil // already sent (history and live overlap)
	}
	if w.last != 0 && seq > w.last+1 && seq > w.allow && !w.noHistory && !interruptedMarker(ev) && !w.past(ev) {
		return &gapError{next: seq}
	}
	if err := w.raw(ev); err != nil {
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

// past reports whether ev was published longer ago than the gap wait: the
// events before it that history lacks would have been stored by now, so a
// gap before it (read from history) is not waited for again.
func (w *watcher) past(ev *sessionsv1.SessionEvent) bool {
	return ev.GetTime() != nil && time.Since(ev.GetTime().AsTime()) > w.gapWait
}

// interruptedMarker reports whether ev is the error event closing a turn
// whose replica died: the ids before it that its replica reserved but never
// published are a hole for good.
func interruptedMarker(ev *sessionsv1.SessionEvent) bool {
	e, ok := ev.GetPayload().(*sessionsv1.SessionEvent_Error)
	return ok && e.Error.GetType() == errorTypeInterrupted
}

// catchUp replays history after the last event sent, in id order. Where
// history has a gap in the ids, or lacks the events before upto (0: none
// expected), it reads again, backing off, until they have been stored or
// gapMaxWait has passed; then it goes on past the gap. Without history
// kept at all (NATS disabled) the watch goes on with live events only.
func (w *watcher) catchUp(ctx context.Context, known, upto uint64) error {
	delay, waited := gapFirstDelay, time.Duration(0)
	for {
		missing, err := w.replay(ctx, known, upto)
		if err != nil || missing == 0 {
			return err
		}
		if waited >= w.gapWait {
			w.log.WarnContext(ctx, "watch: events never reached history; going on past the gap",
				"session_id", w.sessionID, "after", w.last, "next", missing, "waited", waited)
			w.allow = missing
			if upto != 0 && missing >= upto {
				return nil
			}
			continue // history holds what follows the gap
		}
		// Open the stream while it waits, so the caller sees it is live.
		if err := w.open(); err != nil {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return status.FromContextError(ctx.Err()).Err()
		case <-w.stopping:
			t.Stop()
			return errShutdown
		case <-t.C:
		}
		waited += delay
		delay = min(2*delay, gapMaxDelay)
	}
}

// replay reads history once; missing is the id after the gap it stopped
// at (0: none).
func (w *watcher) replay(ctx context.Context, known, upto uint64) (missing uint64, err error) {
	err = w.watch.Replay(ctx, w.sessionID, w.last, known, func() error {
		w.last, w.allow = 0, 0
		return w.raw(&sessionsv1.SessionEvent{
			SessionId: w.sessionID,
			Payload:   &sessionsv1.SessionEvent_Reset_{Reset_: &sessionsv1.ResetEvent{Reason: "not_retained"}},
		})
	}, w.send)
	var gap *gapError
	switch {
	case errors.As(err, &gap):
		return gap.next, nil
	case errors.Is(err, ErrNoHistory):
		w.noHistory = true
		return 0, nil
	case err != nil:
		return 0, err
	case w.ended || upto == 0 || w.last+1 >= upto || upto <= w.allow:
		return 0, nil
	}
	return upto, nil
}

// watchSettle is when a new watch reads history a second time: well past
// the time a subscription takes to reach the other nodes of a cluster.
const watchSettle = 500 * time.Millisecond

// A gap in a watcher's ids is waited out, reading history again from
// gapFirstDelay, doubling up to gapMaxDelay, for at most WatchGapWait
// (DefaultWatchGapWait): long enough for a replica's spool to reach
// JetStream after an election (its events published through the outage
// are stored late). A gap still open after that is an event lost for good
// (a publish JetStream refused) and the watch goes on past it.
const (
	gapFirstDelay       = 25 * time.Millisecond
	gapMaxDelay         = time.Second
	DefaultWatchGapWait = 60 * time.Second
)

// stop ends the watch after a failed catch-up: an open watch whose history
// could not be read (NATS went away) ends with a reason, and the watcher
// reconnects with Last-Event-ID and misses nothing; on shutdown it ends as
// the server's other watches do. Other errors (the caller gone) end it as
// they are.
func (w *watcher) stop(err error) error {
	switch {
	case errors.Is(err, errShutdown):
		return w.end("shutdown")
	case errors.Is(err, ErrHistoryUnavailable):
		return w.end("history_unavailable")
	}
	return err
}

func (w *watcher) end(reason string) error {
	return w.raw(&sessionsv1.SessionEvent{
		SessionId: w.sessionID,
		Payload:   &sessionsv1.SessionEvent_End{End: &sessionsv1.EndEvent{Reason: reason}},
	})
}
