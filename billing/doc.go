// Package billing owns kgentsd's usage billing: the CloudEvents usage events
// of SPEC §4.7 (their model, deterministic ids and JSON encoding), the
// JetStream metering stream they are published to ("kgent-metering"), and
// the OpenMeter sink that delivers them from that stream to OpenMeter's
// ingestion API (a durable consumer shared by every replica; it acknowledges
// an event only after OpenMeter accepted it and dead-letters what OpenMeter
// rejects). The Stripe bridge will live here too, later.
//
// The path of a usage event: the metering interceptor builds it with one of
// the New* constructors and publishes it (Publish, or the streaming spool
// while NATS is away) to kgent.metering.events.<type> with Nats-Msg-Id = its
// id; a Processor fetches batches from the stream and POSTs them to
// {OPENMETER_BASE_URL}/api/v1/events. Delivery is at least once; the ids are
// deterministic so that every replay is deduplicated, first by JetStream's
// duplicate window and then by OpenMeter (unique by id + source, 32 days).
//
// Failure behaviour of the sink: an event is acknowledged on the stream only
// after OpenMeter answered 2xx for a batch holding it (or after it was
// stored as a dead letter). 429 waits Retry-After (capped) and resends the
// same batch; 5xx, timeouts, network errors and 401/403 back off
// exponentially with full jitter while the batch is marked in progress; a
// 400/413/422 splits the batch in halves until the rejected events are
// alone, and those go to kgent.metering.dead.<type> with OpenMeter's error
// in a header. Duplicates (the same id posted twice) arise only when an
// accepted batch's ack is not confirmed (NATS failing at that moment), when
// a request times out after OpenMeter took it, when a rejected batch is
// split (OpenMeter's batches are not atomic: it may have taken the events
// before the bad one), or when the consumer is recreated; OpenMeter's dedupe, which operators must enable on a
// self-hosted install, absorbs them.
package billing
