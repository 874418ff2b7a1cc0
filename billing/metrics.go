package billing

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kgents/kgents-go/telemetry"
)

// metrics are the sink's Prometheus metrics (reference §10 names). Labels
// are event types and error reasons only: never tenant, session or key ids.
type metrics struct {
	sent        map[string]prometheus.Counter // by typeLabel
	dead        map[string]prometheus.Counter // by typeLabel
	flushErrors map[ErrorKind]prometheus.Counter
	latency     prometheus.Histogram
	buffered    prometheus.Gauge
	ackFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		// Not exported anywhere, but every code path can still update it.
		reg = prometheus.NewRegistry()
	}
	sent, err1 := telemetry.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kgents_openmeter_events_sent_total",
		Help: "Usage events OpenMeter accepted (2xx), by event type.",
	}, []string{"event_type"}))
	dead, err2 := telemetry.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kgents_openmeter_dead_letters_total",
		Help: "Usage events moved to the dead-letter subject (rejected by OpenMeter or not a valid CloudEvent), by event type.",
	}, []string{"event_type"}))
	flushErrors, err3 := telemetry.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kgents_openmeter_flush_errors_total",
		Help: "Failed OpenMeter ingestion requests, by reason (rate_limited, bad_batch, client, server, network).",
	}, []string{"reason"}))
	latency, err4 := telemetry.Register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kgents_openmeter_flush_latency_seconds",
		Help:    "Duration of OpenMeter ingestion requests, whatever their outcome.",
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	}))
	buffered, err5 := telemetry.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kgents_openmeter_events_buffered",
		Help: "Usage events in the metering stream not yet accepted by OpenMeter (consumer pending + awaiting ack).",
	}))
	ackFailures, err6 := telemetry.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kgents_openmeter_ack_failures_total",
		Help: "Accepted events whose JetStream ack was not confirmed; they are redelivered and deduplicated by id.",
	}))
	if err := errors.Join(err1, err2, err3, err4, err5, err6); err != nil {
		return nil, err
	}
	m := &metrics{
		sent:        map[string]prometheus.Counter{},
		dead:        map[string]prometheus.Counter{},
		flushErrors: map[ErrorKind]prometheus.Counter{},
		latency:     latency,
		buffered:    buffered,
		ackFailures: ackFailures,
	}
	// Create every series up front, so dashboards and alerts see zeros
	// rather than nothing.
	for _, t := range append(EventTypes(), "other") {
		m.sent[t] = sent.WithLabelValues(t)
		m.dead[t] = dead.WithLabelValues(t)
	}
	for _, k := range []ErrorKind{KindRateLimited, KindBadBatch, KindClient, KindServer, KindNetwork} {
		m.flushErrors[k] = flushErrors.WithLabelValues(string(k))
	}
	return m, nil
}
