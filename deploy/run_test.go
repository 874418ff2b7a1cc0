package deploy_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metricsql"
	"github.com/nats-io/jwt/v2"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/kgents/kgents-go/server/servertest"
)

// TestRunsAsTheManifestsSayIt runs NATS and kgentsd from the manifests and
// the Secret templates, with real credentials filled in where the templates
// say REPLACE_WITH_…, and checks that they work together and that every
// metric the dashboard and the alert rules query is one kgentsd serves.
//
// What differs from a cluster, and why: loopback and free ports (4222 is
// taken on this machine), stores in the test's directory, one NATS node with
// no cluster block (one node of three cannot elect a JetStream meta leader)
// and so NATS_REPLICAS=1, and an HTTP server standing in for OpenMeter.
func TestRunsAsTheManifestsSayIt(t *testing.T) {
	// POD_NAME is read from the environment by nats.conf, as in the pod.
	t.Setenv("POD_NAME", "nats-0")
	dir := t.TempDir()
	secrets := "kubernetes/secrets/"

	// The NATS accounts an operator makes with nsc, made here with the
	// libraries nsc uses: an operator, the system account, the KGENTS
	// account with JetStream, and kgentsd's user in it.
	creds := natsIdentities(t)
	authConf := fill(t, read(t, secrets+"auth.conf.example"), creds)
	userCreds := fill(t, read(t, secrets+"kgentsd.creds.example"), creds)
	write(t, filepath.Join(dir, "auth.conf"), authConf)
	write(t, filepath.Join(dir, "kgentsd.creds"), userCreds)

	natsConfig := object(t, "kubernetes/nats.yaml", "ConfigMap", "nats-config")
	write(t, filepath.Join(dir, "nats.conf"), natsConfig.Data["nats.conf"])
	opts, err := natsserver.ProcessConfigFile(filepath.Join(dir, "nats.conf"))
	if err != nil {
		t.Fatalf("nats.conf with the filled-in auth.conf does not load: %v", err)
	}
	if opts.ServerName != "nats-0" || opts.Cluster.Port != 6222 || len(opts.Routes) != 3 || !opts.JetStream || len(opts.TrustedOperators) != 1 {
		t.Fatalf("nats.conf read as server_name %q, cluster port %d, %d routes, JetStream %v, %d operators",
			opts.ServerName, opts.Cluster.Port, len(opts.Routes), opts.JetStream, len(opts.TrustedOperators))
	}
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.HTTPHost, opts.HTTPPort = "127.0.0.1", -1
	opts.Cluster, opts.Routes = natsserver.ClusterOpts{}, nil
	opts.StoreDir = filepath.Join(dir, "jetstream")
	opts.NoSigs = true
	ns, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(20 * time.Second) {
		t.Fatal("NATS is not ready after 20 s")
	}

	// The StatefulSet's probes answer 200 on this release.
	nc := onlyContainer(t, object(t, "kubernetes/nats.yaml", "StatefulSet", "nats"))
	for _, p := range []*probe{nc.ReadinessProbe, nc.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Fatal("the NATS container lacks an HTTP readiness or liveness probe")
		}
		pollStatus(t, "http://"+ns.MonitorAddr().String()+p.HTTPGet.Path, http.StatusOK)
	}

	// Authentication is on: no credentials, no connection; kgentsd's may
	// use JetStream.
	if c, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(0)); err == nil {
		c.Close()
		t.Fatal("NATS accepted a client without credentials")
	}
	conn, err := nats.Connect(ns.ClientURL(), nats.UserCredentials(filepath.Join(dir, "kgentsd.creds")))
	if err != nil {
		t.Fatalf("kgentsd's credentials (kgentsd.creds.example filled in) are refused: %v", err)
	}
	js, err := jetstream.New(conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(t.Context()); err != nil {
		t.Fatalf("the KGENTS account has no JetStream: %v", err)
	}
	conn.Close()

	// kgentsd, configured by the ConfigMap and the Deployment's env, its
	// secrets from the templates. The key file gets one real key's hash.
	const operatorKey = "kg_deploy_test_operator_key_0123456789"
	sum := sha256.Sum256([]byte(operatorKey))
	keys := read(t, secrets+"keys.json.example")
	zeros := strings.Repeat("0", 64)
	if !strings.Contains(keys, zeros) {
		t.Fatalf("keys.json.example has no placeholder hash (64 zeros) to replace")
	}
	write(t, filepath.Join(dir, "keys.json"), strings.Replace(keys, zeros, hex.EncodeToString(sum[:]), 1))

	var delivered atomic.Int64
	openMeter := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/events" || r.Header.Get("Authorization") != "Bearer REPLACE_WITH_OPENMETER_API_KEY" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
			return
		}
		var batch []json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			http.Error(w, "not a batch", http.StatusBadRequest)
			return
		}
		delivered.Add(int64(len(batch)))
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(openMeter.Close)

	env := kgentsdEnv(t, envFile(t, secrets+"kgentsd-secrets.env.example"))
	for k, v := range map[string]string{
		"LISTEN_HOST": "127.0.0.1", "HTTP_PORT": "0", "GRPC_PORT": "0", "METRICS_PORT": "0",
		"KGENTS_DATA_DIR":             filepath.Join(dir, "kgentsd"),
		"KGENTS_API_KEYS_FILE":        filepath.Join(dir, "keys.json"),
		"NATS_CREDS":                  filepath.Join(dir, "kgentsd.creds"),
		"NATS_SERVERS":                ns.ClientURL(),
		"NATS_REPLICAS":               "1",
		"OPENMETER_BASE_URL":          openMeter.URL,
		"OPENMETER_FLUSH_INTERVAL":    "0.05",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "",
		"SHUTDOWN_DRAIN":              "0",
	} {
		env[k] = v
	}
	in := servertest.Start(t, env)

	// A little traffic, so that the series which appear on first use exist.
	resp, b := in.Do(t, "POST", "/v1/soul/dialogue", operatorKey, `{"prompt":"What should I focus on this week?"}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("dialogue with the key file's operator key: %d %s", resp.StatusCode, b)
	}
	resp, b = in.Do(t, "POST", "/v1/kgent/sessions", operatorKey, `{"title":"deploy test"}`)
	var session struct {
		ID string `json:"id"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &session) != nil || session.ID == "" {
		t.Fatalf("creating a session (it lives in NATS): %d %s", resp.StatusCode, b)
	}
	resp, b = in.Do(t, "POST", "/v1/kgent/sessions/"+session.ID+"/messages", operatorKey, `{"message":"hello","stream":false}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a session turn: %d %s", resp.StatusCode, b)
	}
	poll(t, "usage events at the OpenMeter stand-in", func() bool { return delivered.Load() > 0 })

	queried := map[string][]string{} // metric -> the queries naming it
	for _, q := range queries(t) {
		names, err := queriedMetrics(q.expr)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
		}
		for _, n := range names {
			queried[n] = append(queried[n], q.where)
		}
	}
	if len(queried) < 20 {
		t.Fatalf("only %d metrics queried by the dashboard and rules; is the parsing broken?", len(queried))
	}
	metricsURL := "http://" + in.Server.MetricsAddr().String() + "/metrics"
	var missing []string
	poll(t, "every queried metric in /metrics", func() bool {
		served := servedMetrics(t, metricsURL)
		missing = missing[:0]
		for name := range queried {
			if !served[name] {
				missing = append(missing, name)
			}
		}
		return len(missing) == 0
	}, func() string {
		slices.Sort(missing)
		var b strings.Builder
		for _, m := range missing {
			fmt.Fprintf(&b, "\n  %s, queried by %s", m, strings.Join(queried[m], "; "))
		}
		return "metrics kgentsd does not serve:" + b.String()
	})
}

// natsIdentities makes an operator, a system account, a KGENTS account with
// JetStream and a user in it, and returns each template placeholder's value.
func natsIdentities(t *testing.T) map[string]string {
	t.Helper()
	must := func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	operator, _ := nkeys.CreateOperator()
	system, _ := nkeys.CreateAccount()
	account, _ := nkeys.CreateAccount()
	user, _ := nkeys.CreateUser()
	operatorPub := must(operator.PublicKey())
	systemPub := must(system.PublicKey())
	accountPub := must(account.PublicKey())
	userPub := must(user.PublicKey())

	oc := jwt.NewOperatorClaims(operatorPub)
	oc.Name, oc.SystemAccount = "kgents", systemPub
	sc := jwt.NewAccountClaims(systemPub)
	sc.Name = "SYS"
	ac := jwt.NewAccountClaims(accountPub)
	ac.Name = "KGENTS"
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	uc := jwt.NewUserClaims(userPub)
	uc.Name = "kgentsd"
	seed, err := user.Seed()
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"REPLACE_WITH_OPERATOR_JWT":              must(oc.Encode(operator)),
		"REPLACE_WITH_SYSTEM_ACCOUNT_PUBLIC_KEY": systemPub,
		"REPLACE_WITH_SYSTEM_ACCOUNT_JWT":        must(sc.Encode(operator)),
		"REPLACE_WITH_KGENTS_ACCOUNT_PUBLIC_KEY": accountPub,
		"REPLACE_WITH_KGENTS_ACCOUNT_JWT":        must(ac.Encode(operator)),
		"REPLACE_WITH_USER_JWT":                  must(uc.Encode(account)),
		"REPLACE_WITH_USER_SEED":                 string(seed),
	}
}

// fill replaces every placeholder in a template and fails on one left over.
func fill(t *testing.T, template string, values map[string]string) string {
	t.Helper()
	for k, v := range values {
		template = strings.ReplaceAll(template, k, v)
	}
	if strings.Contains(template, "REPLACE_WITH_") {
		t.Fatalf("a placeholder the test does not know is left in:\n%s", template)
	}
	return template
}

// kgentsdEnv is kgentsd's environment as the manifests give it: the
// ConfigMap, and the Deployment's env with secretKeyRef values taken from
// secret (the kgentsd-secrets template) and optional ones left out.
func kgentsdEnv(t *testing.T, secret map[string]string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for k, v := range object(t, "kubernetes/kgentsd.yaml", "ConfigMap", "kgentsd").Data {
		env[k] = v
	}
	for _, e := range onlyContainer(t, object(t, "kubernetes/kgentsd.yaml", "Deployment", "kgentsd")).Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != "kgentsd-secrets" {
				t.Fatalf("%s comes from Secret %s; the test knows kgentsd-secrets only", e.Name, ref.Name)
			}
			v, ok := secret[ref.Key]
			if !ok && !ref.Optional {
				t.Fatalf("%s comes from key %s of kgentsd-secrets, which its template lacks", e.Name, ref.Key)
			}
			if ok {
				env[e.Name] = v
			}
		}
	}
	return env
}

// envFile reads a kustomize env file: key=value lines, # comments.
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(read(t, path)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not key=value", path, line)
		}
		out[k] = v
	}
	return out
}

type query struct{ where, expr string }

// queries returns every PromQL expression of the dashboard and the rules.
func queries(t *testing.T) []query {
	t.Helper()
	var dash struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal([]byte(read(t, "grafana/kgentsd-dashboard.json")), &dash); err != nil {
		t.Fatalf("the dashboard: %v", err)
	}
	var out []query
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, query{fmt.Sprintf("panel %q %s", p.Title, tg.RefID), tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, r := range rules(t) {
		out = append(out, query{"alert " + r.Alert, r.Expr})
	}
	return out
}

type panel struct {
	Title   string `json:"title"`
	Panels  []panel
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

type rule struct {
	Alert string `yaml:"alert"`
	Expr  string `yaml:"expr"`
}

func rules(t *testing.T) []rule {
	t.Helper()
	var f struct {
		Groups []struct {
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "prometheus/rules.yaml")), &f); err != nil {
		t.Fatal(err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// queriedMetrics returns the names of the metrics a PromQL expression selects.
func queriedMetrics(expr string) ([]string, error) {
	e, err := metricsql.Parse(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	var problem error
	metricsql.VisitAll(e, func(x metricsql.Expr) {
		me, ok := x.(*metricsql.MetricExpr)
		if !ok || me.IsEmpty() {
			return
		}
		for _, group := range me.LabelFilterss {
			named := false
			for _, lf := range group {
				if lf.Label != "__name__" {
					continue
				}
				if lf.IsRegexp || lf.IsNegative {
					problem = fmt.Errorf("selects metrics by a pattern (%s): name them", me.AppendString(nil))
				}
				named = true
				if !slices.Contains(names, lf.Value) {
					names = append(names, lf.Value)
				}
			}
			if !named {
				problem = fmt.Errorf("selects series without a metric name (%s)", me.AppendString(nil))
			}
		}
	})
	return names, problem
}

// servedMetrics returns the series names /metrics serves: each family's
// name, and a histogram's or summary's _bucket, _sum and _count.
func servedMetrics(t *testing.T, url string) map[string]bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	out := map[string]bool{}
	for name, f := range families {
		if len(f.GetMetric()) == 0 {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name], out[name+"_sum"], out[name+"_count"] = true, true, true
		default:
			out[name] = true
		}
	}
	return out
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// poll waits up to 20 s for ok; why, if given, says what is wrong.
func poll(t *testing.T, what string, ok func() bool, why ...func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			msg := ""
			for _, w := range why {
				msg += "\n" + w()
			}
			t.Fatalf("waited 20 s for %s%s", what, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pollStatus waits for url to answer status.
func pollStatus(t *testing.T, url string, status int) {
	t.Helper()
	last := 0
	poll(t, fmt.Sprintf("%d from %s", status, url), func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		last = resp.StatusCode
		return last == status
	}, func() string { return fmt.Sprintf("last status %d", last) })
}
