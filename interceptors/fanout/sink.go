// Package fanout publishes every event of every session turn to NATS
// JetStream (kgent.session.<session>.<type> on stream kgent-events), so any
// number of watchers on any replica can follow a session live. The fan-out
// interceptor installs a Sink in the context of session-scoped calls; the
// Sessions service hands each event it produces to Publish and never imports
// NATS. Publishing is asynchronous and goes on after the caller has gone.
package fanout

import (
	"context"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
)

// Sink receives a session's events, in order. Publish must not block on the
// network.
type Sink interface {
	Publish(ctx context.Context, tenantID string, ev *sessionsv1.SessionEvent)
}

type sinkKey struct{}

// WithSink returns ctx carrying s.
func WithSink(ctx context.Context, s Sink) context.Context {
	return context.WithValue(ctx, sinkKey{}, s)
}

// Publish hands ev to the context's sink; without one it does nothing.
func Publish(ctx context.Context, tenantID string, ev *sessionsv1.SessionEvent) {
	if s, ok := ctx.Value(sinkKey{}).(Sink); ok && s != nil {
		s.Publish(ctx, tenantID, ev)
	}
}
