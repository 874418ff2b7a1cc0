package streaming

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kgents/kgents-go/telemetry"
)

// pubMetrics are the publisher's Prometheus metrics (reference §10 names,
// really updated, and no ids as label values).
type pubMetrics struct {
	published  *prometheus.CounterVec
	errors     prometheus.Counter
	circuit    prometheus.Gauge
	depth      prometheus.Gauge
	bytes      prometheus.Gauge
	replayed   prometheus.Counter
	duplicates prometheus.Counter
	resolved   prometheus.Counter
	dropped    *prometheus.CounterVec
	spoolErrs  prometheus.Counter

	byType sync.Map // subject type → prometheus.Counter
}

// Reasons for kgents_nats_messages_dropped_total.
const (
	dropInvalid  = "invalid"     // not a valid message (no subject / msg id, too large)
	dropSpool    = "spool_error" // had to be spooled and the spool write failed (disk full, I/O error)
	dropRejected = "rejected"    // JetStream refused it for good (kept in rejected.seg)
	dropClosed   = "closed"      // published after Close
)

func newPubMetrics(r prometheus.Registerer) (*pubMetrics, error) {
	if r == nil {
		r = prometheus.NewRegistry()
	}
	m := &pubMetrics{}
	var err error
	if m.published, err = telemetry.Register(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kgents_nats_messages_published_total",
		Help: "Messages stored by JetStream (acknowledged, not duplicates), directly or by spool replay, by subject type.",
	}, []string{"subject_type"})); err != nil {
		return nil, err
	}
	if m.errors, err = telemetry.Register(r, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kgents_nats_publish_errors_total",
		Help: "JetStream publish attempts that failed (ack error or timeout, no stream, disconnected, refused).",
	})); err != nil {
		return nil, err
	}
	if m.circuit, err = telemetry.Register(r, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kgents_nats_circuit_state",
		Help: "Publish circuit breaker: 0 closed, 1 open, 2 half_open.",
	})); err != nil {
		return nil, err
	}
	if m.depth, err = telemetry.Register(r, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kgents_nats_fallback_queue_depth",
		Help: "Messages waiting in the local spool for JetStream.",
	})); err != nil {
		return nil, err
	}
	if m.bytes, err = telemetry.Register(r, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kgents_nats_spool_bytes",
		Help: "Bytes of spool segment files on disk.",
	})); err != nil {
		return nil, err
	}
	if m.replayed, err = telemetry.Register(r, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kgents_nats_spool_replayed_total",
		Help: "Spooled messages acknowledged by JetStream on replay.",
	})); err != nil {
		return nil, err
	}
	if m.duplicates, err = telemetry.Register(r, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kgents_nats_publish_duplicates_total",
		Help: "Publishes JetStream acknowledged as duplicates of an already stored msg id.",
	})); err != nil {
		return nil, err
	}
	if m.resolved, err = telemetry.Register(r, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kgents_nats_spool_resolved_total",
		Help: "Spooled messages refused by JetStream at replay (their place taken meanwhile) and settled another way: a transcript message moved to the end, a session record merged.",
	})); err != nil {
		return nil, err
	}
	if m.dropped, err = telemetry.Register(r, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kgents_nats_messages_dropped_total",
		Help: "Messages that could be neither stored by JetStream nor spooled, by reason (invalid, spool_error, rejected, closed).",
	}, []string{"reason"})); err != nil {
		return nil, err
	}
	if m.spoolErrs, err = telemetry.Register(r, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kgents_nats_spool_errors_total",
		Help: "Spool write or fsync failures (disk full, I/O errors, spool size limit).",
	})); err != nil {
		return nil, err
	}
	for _, reason := range []string{dropInvalid, dropSpool, dropRejected, dropClosed} {
		m.dropped.WithLabelValues(reason)
	}
	return m, nil
}

func (m *pubMetrics) publishedInc(subject string) {
	t := subjectType(subject)
	c, ok := m.byType.Load(t)
	if !ok {
		c, _ = m.byType.LoadOrStore(t, m.published.WithLabelValues(t))
	}
	c.(prometheus.Counter).Inc()
}

// subjectType is the metric label for a subject: its second token
// ("kgent.session.<id>.<type>" → "session"), "kv" for "$KV.<bucket>.<key>",
// "system" for other "$" subjects, and "other" for anything that does not
// look like a fixed word (ids contain digits), so the label set stays small.
func subjectType(subject string) string {
	first, rest, _ := strings.Cut(subject, ".")
	if first == "$KV" {
		return "kv"
	}
	if strings.HasPrefix(first, "$") {
		return "system"
	}
	second, _, _ := strings.Cut(rest, ".")
	if len(second) == 0 || len(second) > 32 {
		return "other"
	}
	for i := 0; i < len(second); i++ {
		c := second[i]
		if (c < 'a' || c > 'z') && c != '_' && c != '-' {
			return "other"
		}
	}
	return second
}
