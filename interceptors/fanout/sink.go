// Package fanout is how every event of every session turn reaches its
// watchers on any replica (SPEC §4.9): Publisher, the Sessions service's
// event sink, hands each event to this replica's hub at once (same-replica
// watchers, also while NATS is down) and to JetStream (kgent.session.
// <session>.<type> on stream kgent-events) for watchers elsewhere and for
// history; publishing is asynchronous and goes on after the caller has
// gone. The Sessions service gets the sink through its constructor and never
// imports NATS.
//
// The interceptor keeps what an interceptor can know about fan-out: which
// session a session-scoped call concerns. It puts the session id in the
// call's tags (the rpc log line) and on its span, so a turn's events, its
// log line and its trace meet on one id.
package fanout
