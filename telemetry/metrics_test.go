package telemetry_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kgents/kgents-go/telemetry"
)

func TestRegisterSharesIdenticalCollectors(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "kgents_test_total", Help: "A test counter."}
	first, err := telemetry.Register(reg, prometheus.NewCounter(opts))
	if err != nil {
		t.Fatal(err)
	}
	second, err := telemetry.Register(reg, prometheus.NewCounter(opts))
	if err != nil || second != first {
		t.Fatalf("second registration: %v, same collector %v", err, second == first)
	}
	second.Inc()
	if mfs, _ := reg.Gather(); len(mfs) != 1 || mfs[0].GetMetric()[0].GetCounter().GetValue() != 1 {
		t.Errorf("gathered %v", mfs)
	}
	// The same name with another type is an error, not a silent share.
	if _, err := telemetry.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: "kgents_test_total", Help: "A test counter."})); err == nil {
		t.Error("a gauge registered over a counter of the same name")
	}
}
