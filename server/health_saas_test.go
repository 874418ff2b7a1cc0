package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// healthFreePort is a loopback port free a moment ago (for METRICS_PORT,
// where 0 means "on HTTP_PORT").
func healthFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

func getJSON(t *testing.T, url string) (map[string]any, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s %v", url, resp.StatusCode, b, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, b)
	}
	return m, string(b)
}

func part(m map[string]any, name string) map[string]any {
	p, _ := m[name].(map[string]any)
	return p
}

// pollUntil polls cond (a condition on the server's state, with a deadline).
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamsOn lists the JetStream streams of the server at addr.
func streamsOn(t *testing.T, addr string) []string {
	t.Helper()
	nc, err := nats.Connect("nats://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var names []string
	l := js.StreamNames(ctx)
	for n := range l.Name() {
		names = append(names, n)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// addressLike matches what must never be in the public view: URLs and
// host:port pairs.
var addressLike = regexp.MustCompile(`[a-z][a-z0-9+.-]*://|\b\d{1,3}(\.\d{1,3}){3}\b|localhost|\[[0-9a-f:]+\]|(?:^|[^0-9A-Za-z])[A-Za-z][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*:\d{2,5}\b`)

// TestHealthSaaSPublicAndOperatorViews: /health/saas on HTTP_PORT is public
// and keeps to statuses and counts — no embedded NATS URL, no OpenMeter URL
// in error text, no server version; the same document in full is on
// METRICS_PORT, which stays private.
func TestHealthSaaSPublicAndOperatorViews(t *testing.T) {
	t.Parallel()
	// An OpenMeter "inside the cluster" that is down: its URL ends up in the sink's error.
	downOM := "http://127.0.0.1:" + strconv.Itoa(healthFreePort(t))
	metricsPort := healthFreePort(t)
	in := servertest.Start(t, map[string]string{
		"METRICS_PORT":      strconv.Itoa(metricsPort),
		"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": downOM, "OPENMETER_API_KEY": "om_test_key",
		"OPENMETER_FLUSH_INTERVAL": "0.05",
	})
	resp, b := in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"anything to meter"}`)
	mustStatus(t, resp, b, http.StatusOK)

	// The public view: the same statuses, nothing that names a host.
	var pub map[string]any
	var pubBody string
	pollUntil(t, "the OpenMeter sink to report its failure", func() bool {
		pub, pubBody = getJSON(t, in.URL+"/health/saas")
		return part(pub, "openmeter")["status"] == "unhealthy"
	})
	if loc := addressLike.FindString(pubBody); loc != "" {
		t.Errorf("the public /health/saas shows %q: %s", loc, pubBody)
	}
	for _, key := range []string{"embedded_url", "server_version", "error", "last_error", "spool_error"} {
		if strings.Contains(pubBody, `"`+key+`"`) {
			t.Errorf("the public /health/saas has %s: %s", key, pubBody)
		}
	}
	operators := "http://" + in.Server.MetricsAddr().String() + "/health/saas"
	full, fullBody := getJSON(t, operators)
	// The operators' view has the detail.
	if u, _ := part(full, "nats")["embedded_url"].(string); !strings.HasPrefix(u, "nats://127.0.0.1:") {
		t.Errorf("operators' view: no embedded NATS URL: %s", fullBody)
	}
	if e, _ := part(full, "openmeter")["last_error"].(string); !strings.Contains(e, strings.TrimPrefix(downOM, "http://")) {
		t.Errorf("operators' view: OpenMeter's error does not name the endpoint: %s", fullBody)
	}
	if _, ok := part(full, "nats")["server_version"]; !ok {
		t.Errorf("operators' view: no NATS server version: %s", fullBody)
	}

	if pub["status"] != full["status"] || pub["status"] != "degraded" {
		t.Errorf("status: public %v, operators %v, want degraded (OpenMeter down)", pub["status"], full["status"])
	}
	for _, c := range []struct{ part, key string }{
		{"nats", "status"}, {"nats", "mode"}, {"nats", "spool_depth"}, {"nats", "watchers"},
		{"openmeter", "status"}, {"openmeter", "configured"}, {"openmeter", "backlog"},
	} {
		if _, ok := part(pub, c.part)[c.key]; !ok {
			t.Errorf("the public /health/saas lacks %s.%s: %s", c.part, c.key, pubBody)
		}
	}
	if part(pub, "openmeter")["status"] != "unhealthy" || part(pub, "nats")["status"] != "healthy" {
		t.Errorf("public statuses: %s", pubBody)
	}
	if br, _ := part(pub, "nats")["breaker"].(map[string]any); br["state"] != "closed" || len(br) != 1 {
		t.Errorf("public breaker: %v, want only its state", br)
	}
}

// TestHealthSaaSOldNATSAfterDegradedStart: kgentsd starts while NATS is
// unreachable and the server it then reaches is older than 2.11. It must
// not use it: /health/saas says incompatible (the error, in the operators'
// view, says why) and no kgentsd stream is created on it.
func TestHealthSaaSOldNATSAfterDegradedStart(t *testing.T) {
	t.Parallel()
	for _, oc := range natstest.OldCases {
		t.Run(oc.Name, func(t *testing.T) {
			old, rewrite := oc.Start(t, streaming.MinServerVersion)
			proxy := natstest.StartProxy(t) // refusing: NATS is down at start
			in := servertest.Start(t, map[string]string{
				"NATS_SERVERS": proxy.URL(), "NATS_CONNECT_TIMEOUT": "0.1",
				"METRICS_PORT": strconv.Itoa(healthFreePort(t)),
			})
			proxy.Route(old.Addr, rewrite)

			var pub map[string]any
			var pubBody string
			pollUntil(t, "/health/saas to report the old server", func() bool {
				pub, pubBody = getJSON(t, in.URL+"/health/saas")
				return part(pub, "nats")["status"] == "incompatible"
			})
			if part(pub, "nats")["mode"] != "fallback" || pub["status"] != "degraded" {
				t.Errorf("public /health/saas on an old NATS: %s", pubBody)
			}
			full, fullBody := getJSON(t, "http://"+in.Server.MetricsAddr().String()+"/health/saas")
			if e, _ := part(full, "nats")["error"].(string); !strings.Contains(e, old.Version) || !strings.Contains(e, "too old") {
				t.Errorf("operators' /health/saas does not say the server is too old: %s", fullBody)
			}
			// /health/saas reads the live connection; the log comes from the
			// reconnect callback, which may run a moment later.
			pollUntil(t, "an ERROR log about the old server", func() bool {
				return strings.Contains(in.Logs.String(), "level=ERROR msg=\"NATS server "+old.Version+" is too old")
			})
			// A turn still works (fallback), and nothing was created on the old server.
			resp, b := in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"still there?"}`)
			mustStatus(t, resp, b, http.StatusOK)
			if names := streamsOn(t, old.Addr); len(names) != 0 {
				t.Errorf("kgentsd created streams on the old server: %v", names)
			}
		})
	}
}
