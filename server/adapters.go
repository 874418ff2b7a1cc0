package server

// Adapters between the services and the streaming and billing packages.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/kgents/kgents-go/billing"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/server/sessionsvc"
	"github.com/kgents/kgents-go/streaming"
)

// watchAdapter gives the Sessions service its view of streaming.
type watchAdapter struct {
	hub     *streaming.Hub
	history *streaming.History
}

func (w watchAdapter) Subscribe(sessionID string) sessionsvc.Feed { return w.hub.Subscribe(sessionID) }

func (w watchAdapter) Replay(ctx context.Context, sessionID string, after, known uint64, onReset func() error, deliver func(*sessionsv1.SessionEvent) error) error {
	if w.history == nil {
		return sessionsvc.ErrNoHistory // NATS disabled: live events only
	}
	_, _, err := w.history.Replay(ctx, sessionID, after, known, onReset, deliver)
	if errors.Is(err, streaming.ErrNoHistory) {
		return fmt.Errorf("%w: %w", sessionsvc.ErrHistoryUnavailable, err)
	}
	return err
}

// usageEvents is where metering sends usage events: the kgent-metering
// stream, through the durable publisher (the spool while NATS is away).
func (s *Server) usageEvents() metering.Emitter {
	if !s.nats.Enabled() {
		return discardEvents{} // no stream to keep them in
	}
	return &meteringOutbox{pub: s.pub, log: s.log}
}

// discardEvents drops usage events (NATS_ENABLED=false: tests, experiments).
type discardEvents struct{}

func (discardEvents) Emit([]event.Event) {}

// meteringOutbox publishes the usage events it is given (a call's, or a
// batch of calls') as one message (billing.CallMessage), with a Nats-Msg-Id
// derived from their CloudEvents ids so the stream stores a retried message
// once. An event that cannot be encoded is dropped alone (logged), not with
// the others.
type meteringOutbox struct {
	pub interface{ Publish(streaming.Message) } // the durable publisher
	log *slog.Logger
}

func (o *meteringOutbox) Emit(events []event.Event) {
	m, err := billing.CallMessage(events)
	if err == nil {
		o.pub.Publish(m)
		return
	}
	if len(events) == 1 {
		o.log.Error("usage event not encodable", "type", events[0].Type(), "id", events[0].ID(), "error", err)
		return
	}
	for i := range events {
		o.Emit(events[i : i+1])
	}
}
