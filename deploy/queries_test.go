package deploy_test

import (
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestQueriedMetrics(t *testing.T) {
	t.Parallel()
	cases := []struct {
		expr    string
		want    []string
		problem string
	}{
		{`sum by (endpoint) (rate(kgents_api_requests_total[5m]))`, []string{"kgents_api_requests_total"}, ""},
		{`histogram_quantile(0.5, sum by (le) (rate(a_seconds_bucket{endpoint!~".*(events)$"}[5m])))`, []string{"a_seconds_bucket"}, ""},
		{`max by (instance) (process_resident_memory_bytes and on (job, instance) kgents_build_info)`, []string{"process_resident_memory_bytes", "kgents_build_info"}, ""},
		{`sum(rate(x_total{code=~"A|B"}[5m])) / clamp_min(sum(rate(x_total[5m])), 1) > 0.02`, []string{"x_total"}, ""},
		{`max by (namespace, pod) (up) == 1`, []string{"up"}, ""},
		{`{job="kgentsd"}`, nil, "without a metric name"},
		{`{__name__=~"kgents_.*"}`, nil, "by a pattern"},
		{`rate(x_total[5m]`, nil, "unexpected"},
	}
	for _, tc := range cases {
		got, err := queriedMetrics(tc.expr)
		switch {
		case tc.problem == "" && err != nil:
			t.Errorf("%s: %v", tc.expr, err)
		case tc.problem != "" && (err == nil || !strings.Contains(err.Error(), tc.problem)):
			t.Errorf("%s: error %v, want one saying %q", tc.expr, err, tc.problem)
		case tc.problem == "" && !slices.Equal(got, tc.want):
			t.Errorf("%s: %v, want %v", tc.expr, got, tc.want)
		}
	}
}

// TestDashboardJoinsAreTested: the dashboard's queries of the runtime's
// go_* and process_* series (which every Go program exports) are the ones
// prometheus/rules_test.yaml evaluates with promtool against a second Go
// process in the same job, so their independence of the job is tested.
func TestDashboardJoinsAreTested(t *testing.T) {
	t.Parallel()
	var tests struct {
		Tests []struct {
			PromQLExprTest []struct {
				Expr string `yaml:"expr"`
			} `yaml:"promql_expr_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "prometheus/rules_test.yaml")), &tests); err != nil {
		t.Fatal(err)
	}
	tested := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, e := range tc.PromQLExprTest {
			tested[e.Expr] = true
		}
	}
	runtimeQueries := 0
	for _, q := range queries(t) {
		names, err := queriedMetrics(q.expr)
		if err != nil {
			t.Fatalf("%s: %v", q.where, err)
		}
		for _, n := range names {
			if !strings.HasPrefix(n, "go_") && !strings.HasPrefix(n, "process_") {
				continue
			}
			runtimeQueries++
			if !strings.Contains(q.expr, "and on (job, instance) kgents_build_info") {
				t.Errorf("%s queries %s without joining it to kgents_build_info: %s", q.where, n, q.expr)
			}
			if !tested[q.expr] {
				t.Errorf("%s is not evaluated by a promql_expr_test in rules_test.yaml: %s", q.where, q.expr)
			}
		}
	}
	if runtimeQueries == 0 {
		t.Error("no dashboard query of go_* or process_* series; has the dashboard changed shape?")
	}
}
