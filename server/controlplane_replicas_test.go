package server_test

import (
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
	"github.com/kgents/kgents-go/tenancy"
)

// The control plane across two real kgentsd replicas sharing one NATS
// server (SPEC §4.13, "Done when"): everything made or changed through A's
// REST API is enforced by B within 2 s, timed from before A's call.

// exchanges records every response body of a test and the secrets the
// responses minted, to check afterwards that no secret appears anywhere
// but in the one response that minted it, and no key hash anywhere at all.
type exchanges struct {
	mu       sync.Mutex
	bodies   []string
	mintedBy map[string]int // secret → index of the body that returned it
}

var mintedSecret = regexp.MustCompile(`"secret":\s*"(kg_live_[0-9A-Za-z]{32})"`)

func (x *exchanges) do(t *testing.T, in *servertest.Instance, method, path, key, body string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	resp, b := in.Do(t, method, path, key, body, headers...)
	x.record(string(b))
	return resp, b
}

func (x *exchanges) record(body string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.mintedBy == nil {
		x.mintedBy = map[string]int{}
	}
	for _, m := range mintedSecret.FindAllStringSubmatch(body, -1) {
		if _, dup := x.mintedBy[m[1]]; !dup {
			x.mintedBy[m[1]] = len(x.bodies)
		}
	}
	x.bodies = append(x.bodies, body)
}

// hashNeedles are what must never be shown of a key: its SHA-256 in hex,
// and its first 12 hex digits (what file and dev keys' ids used to be).
func hashNeedles(secret string) []string {
	h := tenancy.HashKey(secret)
	full := hex.EncodeToString(h[:])
	return []string{full, full[:12], strings.ToUpper(full[:12])}
}

// check greps every recorded body and every extra document (logs of a
// whole run, /metrics, health) for every secret minted and every hash.
func (x *exchanges) check(t *testing.T, devKeys []string, docs map[string]string) {
	t.Helper()
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.mintedBy) == 0 {
		t.Fatal("no secret was minted: nothing checked")
	}
	var needles []string
	for s := range x.mintedBy {
		needles = append(needles, hashNeedles(s)...)
	}
	for _, k := range devKeys {
		needles = append(needles, hashNeedles(k)...)
	}
	for i, b := range x.bodies {
		for s, at := range x.mintedBy {
			if i != at && strings.Contains(b, s[12:]) { // s[:12] is the key's public prefix
				t.Errorf("response %d shows a secret minted by response %d: %.300s", i, at, b)
			}
		}
		for _, n := range needles {
			if strings.Contains(b, n) {
				t.Errorf("response %d shows a key hash %q: %.300s", i, n, b)
			}
		}
	}
	for name, doc := range docs {
		if doc == "" {
			t.Errorf("%s is empty: nothing checked", name)
		}
		for s := range x.mintedBy {
			if strings.Contains(doc, s[12:]) {
				t.Errorf("%s shows a minted secret", name)
			}
		}
		for _, n := range needles {
			if strings.Contains(doc, n) {
				t.Errorf("%s shows a key hash %q", name, n)
			}
		}
	}
	t.Logf("%d secrets minted; %d responses and %d documents (%d bytes of logs, metrics, health) checked", len(x.mintedBy), len(x.bodies), len(docs), func() int {
		n := 0
		for _, d := range docs {
			n += len(d)
		}
		return n
	}())
}

// within polls cond until it holds, failing the test after limit; it
// returns how long it took from start.
func within(t *testing.T, start time.Time, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

func getText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

func cpReplicas(t *testing.T, natsURL string, extra map[string]string) (a, b *servertest.Instance) {
	t.Helper()
	env := map[string]string{"NATS_SERVERS": natsURL, "KGENTS_SIGNUP": "open", "SIGNUP_RATE": "1000"}
	for k, v := range extra {
		env[k] = v
	}
	env["KGENTS_REPLICA_NAME"] = "a"
	a = servertest.Start(t, env)
	env["KGENTS_REPLICA_NAME"] = "b"
	b = servertest.Start(t, env)
	return a, b
}

func TestControlPlaneTwoReplicas(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	a, b := cpReplicas(t, srv.URL(), nil)
	var x exchanges
	const bound = 2 * time.Second

	// An operator key creates a tenant and its admin key on A.
	resp, body := x.do(t, a, "POST", "/v1/admin/tenants", ops, `{"name":"Replicated","email":"replicated@example.com","tier":"enterprise"}`)
	mustStatus(t, resp, body, http.StatusOK)
	tn := decode[apiTenant](t, body)
	resp, body = x.do(t, a, "POST", "/v1/admin/tenants/"+tn.ID+"/keys", ops, `{"name":"root","scopes":["read","write","admin"],"archetypes":["developer","architect"]}`)
	mustStatus(t, resp, body, http.StatusOK)
	root := decode[keyWithSecret](t, body)
	start := time.Now()
	d := within(t, start, bound, "the admin key on B", func() bool {
		r, _ := x.do(t, b, "GET", "/v1/tenant", root.Secret, "")
		return r.StatusCode == http.StatusOK
	})
	t.Logf("admin key made on A → accepted on B: %v", d)

	// The admin creates keys on A; B accepts them; last_used_at of a use on
	// B reaches A.
	resp, body = x.do(t, a, "POST", "/v1/keys", root.Secret, `{"name":"worker","scopes":["read","write"]}`)
	mustStatus(t, resp, body, http.StatusOK)
	worker := decode[keyWithSecret](t, body)
	within(t, time.Now(), bound, "the worker key on B", func() bool {
		r, _ := x.do(t, b, "GET", "/v1/kgent/sessions", worker.Secret, "")
		return r.StatusCode == http.StatusOK
	})
	within(t, time.Now(), 5*time.Second, "last_used_at of the use on B, read on A", func() bool {
		_, body := x.do(t, a, "GET", "/v1/keys", root.Secret, "")
		for _, k := range decode[struct {
			Keys []apiKey `json:"keys"`
		}](t, body).Keys {
			if k.ID == worker.Key.ID {
				return k.LastUsedAt != nil
			}
		}
		return false
	})

	// The admin revokes it on A: B refuses it within 2 s.
	start = time.Now()
	resp, body = x.do(t, a, "DELETE", "/v1/keys/"+worker.Key.ID, root.Secret, "")
	mustStatus(t, resp, body, http.StatusOK)
	d = within(t, start, bound, "the revoked key refused on B", func() bool {
		r, _ := x.do(t, b, "GET", "/v1/kgent/sessions", worker.Secret, "")
		return r.StatusCode == http.StatusUnauthorized
	})
	t.Logf("revoke on A → 401 on B: %v", d)

	// No escalation through rotation: the admin key cannot rotate a key
	// with a scope or an archetype it does not hold.
	for _, spec := range []string{`{"name":"ops-in-tenant","scopes":["read","operator"]}`, `{"name":"poet","scopes":["read"],"archetypes":["poet"]}`} {
		resp, body = x.do(t, a, "POST", "/v1/admin/tenants/"+tn.ID+"/keys", ops, spec)
		mustStatus(t, resp, body, http.StatusOK)
		strong := decode[keyWithSecret](t, body)
		resp, body = x.do(t, a, "POST", "/v1/keys/"+strong.Key.ID+":rotate", root.Secret, `{"grace_seconds":60}`)
		mustStatus(t, resp, body, http.StatusForbidden)
		resp, body = x.do(t, a, "GET", "/v1/keys", root.Secret, "")
		mustStatus(t, resp, body, http.StatusOK)
		for _, k := range decode[struct {
			Keys []apiKey `json:"keys"`
		}](t, body).Keys {
			if k.ID == strong.Key.ID && k.ExpiresAt != nil {
				t.Errorf("a refused rotation set the key's expiry: %+v", k)
			}
		}
	}

	// Rotation on A: B accepts the new secret, and the old one until the
	// grace ends, then 401.
	resp, body = x.do(t, a, "POST", "/v1/keys", root.Secret, `{"name":"rotating","scopes":["read"]}`)
	mustStatus(t, resp, body, http.StatusOK)
	old := decode[keyWithSecret](t, body)
	within(t, time.Now(), bound, "the key to rotate on B", func() bool {
		r, _ := x.do(t, b, "GET", "/v1/kgent/sessions", old.Secret, "")
		return r.StatusCode == http.StatusOK
	})
	const grace = 2 * time.Second
	start = time.Now()
	resp, body = x.do(t, a, "POST", "/v1/keys/"+old.Key.ID+":rotate", root.Secret, `{"grace_seconds":2}`)
	mustStatus(t, resp, body, http.StatusOK)
	rotated := decode[keyWithSecret](t, body)
	d = within(t, start, bound, "the rotated key on B", func() bool {
		r, _ := x.do(t, b, "GET", "/v1/kgent/sessions", rotated.Secret, "")
		return r.StatusCode == http.StatusOK
	})
	t.Logf("rotate on A → new secret accepted on B: %v", d)
	if r, body := x.do(t, b, "GET", "/v1/kgent/sessions", old.Secret, ""); r.StatusCode != http.StatusOK && time.Since(start) < grace {
		t.Errorf("the old secret on B during the grace: %d %s", r.StatusCode, body)
	}
	var oldRefused time.Duration
	for {
		r, _ := x.do(t, b, "GET", "/v1/tenant", old.Secret, "")
		if r.StatusCode == http.StatusUnauthorized {
			oldRefused = time.Since(start)
			break
		}
		if time.Since(start) > grace+bound {
			t.Fatal("the old secret still works on B 2 s after its grace")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if oldRefused < grace-50*time.Millisecond {
		t.Errorf("the old secret refused on B %v after the rotation, before its %v grace ended", oldRefused, grace)
	}
	t.Logf("old secret refused on B %v after the rotation (grace %v)", oldRefused, grace)

	// A tier downgrade on A: B applies the new limits to the next call,
	// and refuses calls beyond them.
	start = time.Now()
	resp, body = x.do(t, a, "PATCH", "/v1/admin/tenants/"+tn.ID, ops, `{"tier":"free"}`)
	mustStatus(t, resp, body, http.StatusOK)
	var lastLimit string
	d = within(t, start, bound, "the free tier's limits on B", func() bool {
		r, _ := x.do(t, b, "GET", "/v1/kgent/sessions", rotated.Secret, "")
		lastLimit = r.Header.Get("X-RateLimit-Limit")
		return lastLimit == "60" || r.StatusCode == http.StatusTooManyRequests
	})
	t.Logf("downgrade on A → free limits on B: %v", d)
	// 60 a minute is a bucket of 60 refilled at one a second: beyond 60
	// plus one a second of calls, B refuses.
	var refused *http.Response
	var why errBody
	ok, burst := 0, time.Now()
	for range 200 {
		r, body := x.do(t, b, "GET", "/v1/kgent/sessions", rotated.Secret, "")
		if r.StatusCode == http.StatusTooManyRequests {
			refused, why = r, decode[errBody](t, body)
			break
		}
		mustStatus(t, r, body, http.StatusOK)
		ok++
	}
	if allowed := 61 + int(time.Since(burst).Seconds()); refused == nil || refused.Header.Get("Retry-After") == "" || ok > allowed {
		t.Errorf("B after the downgrade: %d calls answered before a 429 (at most %d allowed at 60 a minute), 429 %v (limit seen %q)", ok, allowed, refused != nil, lastLimit)
	}
	// Refused for the free tier's limits (60 a minute, 100 a day), not
	// the enterprise ones it had.
	if !strings.Contains(why.Detail, "60 requests per minute") && !strings.Contains(why.Detail, "100 requests per day") {
		t.Errorf("the 429 after the downgrade is not the free tier's: %+v", why)
	}

	// Suspension, then cancelation, on A: 402 on B.
	for _, st := range []string{"suspended", "canceled"} {
		start = time.Now()
		resp, body = x.do(t, a, "PATCH", "/v1/admin/tenants/"+tn.ID, ops, `{"status":"`+st+`"}`)
		mustStatus(t, resp, body, http.StatusOK)
		var got errBody
		d = within(t, start, bound, st+" on B", func() bool {
			r, body := x.do(t, b, "POST", "/v1/keys", root.Secret, `{"name":"x","scopes":["read"]}`)
			if r.StatusCode != http.StatusPaymentRequired {
				return false
			}
			got = decode[errBody](t, body)
			return got.Code == "tenant_"+st
		})
		t.Logf("status %s on A → 402 %s on B: %v", st, got.Code, d)
	}
	// …while the tenant still reads its usage there (over its limits too).
	resp, body = x.do(t, b, "GET", "/v1/usage", root.Secret, "")
	mustStatus(t, resp, body, http.StatusOK)

	// Sign-up racing across A and B with the same address in two cases:
	// exactly one 200 and one 409.
	for round := range 5 {
		var wg sync.WaitGroup
		codes := make([]int, 2)
		for i, in := range []*servertest.Instance{a, b} {
			email := fmt.Sprintf("Racer%d@Example.com", round)
			if i == 1 {
				email = strings.ToLower(email)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, body := in.Do(t, "POST", "/v1/signup", "", fmt.Sprintf(`{"email":%q,"name":"Racer"}`, email))
				x.record(string(body))
				codes[i] = r.StatusCode
			}()
		}
		wg.Wait()
		slices.Sort(codes)
		if codes[0] != http.StatusOK || codes[1] != http.StatusConflict {
			t.Errorf("round %d: sign-up race answered %v, want one 200 and one 409", round, codes)
		}
	}

	// Propagation, measured: revoke on A → first 401 on B, 100 times, each
	// timed from before A's call.
	resp, body = x.do(t, a, "POST", "/v1/admin/tenants", ops, `{"name":"Measured","email":"measured@example.com","tier":"enterprise"}`)
	mustStatus(t, resp, body, http.StatusOK)
	mt := decode[apiTenant](t, body)
	resp, body = x.do(t, a, "PATCH", "/v1/admin/tenants/"+mt.ID, ops, `{"limits":{"requests_per_minute":0,"requests_per_day":0,"tokens_per_month":0}}`)
	mustStatus(t, resp, body, http.StatusOK)
	resp, body = x.do(t, a, "POST", "/v1/admin/tenants/"+mt.ID+"/keys", ops, `{"name":"admin","scopes":["read","admin"]}`)
	mustStatus(t, resp, body, http.StatusOK)
	madmin := decode[keyWithSecret](t, body)
	const n = 100
	lat := make([]time.Duration, 0, n)
	for i := range n {
		resp, body := x.do(t, a, "POST", "/v1/keys", madmin.Secret, fmt.Sprintf(`{"name":"m%d","scopes":["read"]}`, i))
		mustStatus(t, resp, body, http.StatusOK)
		k := decode[keyWithSecret](t, body)
		within(t, time.Now(), bound, "a new key on B", func() bool {
			r, _ := x.do(t, b, "GET", "/v1/tenant", k.Secret, "")
			return r.StatusCode == http.StatusOK
		})
		start := time.Now()
		resp, body = x.do(t, a, "DELETE", "/v1/keys/"+k.Key.ID, madmin.Secret, "")
		mustStatus(t, resp, body, http.StatusOK)
		lat = append(lat, within(t, start, bound, "a revoked key refused on B", func() bool {
			r, _ := x.do(t, b, "GET", "/v1/tenant", k.Secret, "")
			return r.StatusCode == http.StatusUnauthorized
		}))
	}
	slices.Sort(lat)
	p50, p99 := lat[n/2], lat[n*99/100-1]
	t.Logf("revoke on A → first 401 on B over %d revocations (HTTP, -race=%v): p50 %v, p99 %v, max %v", n, raceEnabled, p50, p99, lat[n-1])
	if p99 >= bound {
		t.Errorf("p99 propagation %v ≥ 2 s", p99)
	}

	// A dev key's listing (file_ ids) and a look at the audit log.
	resp, body = x.do(t, a, "GET", "/v1/keys", carol, "")
	mustStatus(t, resp, body, http.StatusOK)
	resp, body = x.do(t, b, "GET", "/v1/admin/audit?limit=100", ops, "")
	mustStatus(t, resp, body, http.StatusOK)

	// Nothing secret anywhere: every response, both replicas' logs of the
	// whole run, their metrics and health.
	docs := map[string]string{}
	for name, in := range map[string]*servertest.Instance{"A": a, "B": b} {
		docs[name+" /metrics"] = getText(t, in.URL+"/metrics")
		docs[name+" /health/saas"] = getText(t, in.URL+"/health/saas")
		docs[name+" logs"] = in.Logs.String()
	}
	if !strings.Contains(docs["A logs"], "key_id=") {
		t.Error("A's logs name no key_id: the check below would prove nothing")
	}
	x.check(t, []string{ops, carol, bob, alice}, docs)
}

// While NATS is really stopped, authentication serves the last known state
// and /health/saas says the control plane is stale; control-plane writes
// answer 503 with Retry-After. After NATS returns, a change made on another
// replica while this one was cut off is applied (the KV watch recovers).
func TestControlPlaneNATSOutage(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	proxy := natstest.StartProxy(t)
	backend := strings.TrimPrefix(srv.URL(), "nats://")
	proxy.Route(backend, "")
	env := map[string]string{"KGENTS_SIGNUP": "open", "SIGNUP_RATE": "1000"}
	env["NATS_SERVERS"], env["KGENTS_REPLICA_NAME"] = srv.URL(), "a"
	a := servertest.Start(t, env)
	env["NATS_SERVERS"], env["KGENTS_REPLICA_NAME"] = proxy.URL(), "b"
	env["METRICS_PORT"] = strconv.Itoa(healthFreePort(t))
	b := servertest.Start(t, env)
	operators := "http://" + b.Server.MetricsAddr().String() + "/health/saas"

	tn, root := tenantAdmin(t, a, "outage@example.com")
	resp, body := a.Do(t, "POST", "/v1/keys", root.Secret, `{"name":"doomed","scopes":["read"]}`)
	mustStatus(t, resp, body, http.StatusOK)
	doomed := decode[keyWithSecret](t, body)
	within(t, time.Now(), 2*time.Second, "the keys on B", func() bool {
		r1, _ := b.Do(t, "GET", "/v1/tenant", root.Secret, "")
		r2, _ := b.Do(t, "GET", "/v1/tenant", doomed.Secret, "")
		return r1.StatusCode == http.StatusOK && r2.StatusCode == http.StatusOK
	})
	if cp := part(fst(getJSON(t, b.URL+"/health/saas")), "control_plane"); cp["status"] != "ok" {
		t.Fatalf("control plane before the outage: %v", cp)
	}

	// NATS stops.
	srv.Stop()
	pollUntil(t, "B to report the control plane stale", func() bool {
		pub, _ := getJSON(t, b.URL+"/health/saas")
		return part(pub, "control_plane")["status"] == "stale"
	})
	pub, pubBody := getJSON(t, b.URL+"/health/saas")
	if pub["status"] != "degraded" {
		t.Errorf("public /health/saas while NATS is stopped: %s", pubBody)
	}
	full, fullBody := getJSON(t, operators)
	if cp := part(full, "control_plane"); cp["status"] != "stale" || cp["last_sync"] == nil || cp["keys"] == nil || full["status"] != "degraded" {
		t.Errorf("operators' /health/saas while NATS is stopped: %s", fullBody)
	}
	// Authentication serves the last known state, managed keys included,
	// on both replicas; reads of the control plane answer from the cache.
	for _, in := range []*servertest.Instance{a, b} {
		for _, key := range []string{root.Secret, doomed.Secret} {
			resp, body := in.Do(t, "GET", "/v1/tenant", key, "")
			mustStatus(t, resp, body, http.StatusOK)
		}
		resp, body := in.Do(t, "GET", "/v1/keys", root.Secret, "")
		mustStatus(t, resp, body, http.StatusOK)
		// Writes: 503 with Retry-After.
		for _, w := range []struct{ method, path, key, body string }{
			{"POST", "/v1/keys", root.Secret, `{"name":"x","scopes":["read"]}`},
			{"DELETE", "/v1/keys/" + doomed.Key.ID, root.Secret, ""},
			{"PATCH", "/v1/admin/tenants/" + tn.ID, ops, `{"status":"suspended"}`},
			{"POST", "/v1/signup", "", `{"email":"during@example.com","name":"During"}`},
		} {
			resp, body := in.Do(t, w.method, w.path, w.key, w.body)
			mustStatus(t, resp, body, http.StatusServiceUnavailable)
			if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
				t.Errorf("%s %s while NATS is stopped: Retry-After %q", w.method, w.path, resp.Header.Get("Retry-After"))
			}
		}
	}

	// NATS returns, but B stays cut off (its route is down) while A
	// revokes the key and downgrades the tenant.
	proxy.Route("", "")
	srv.Restart()
	var revoked bool
	pollUntil(t, "A to revoke once NATS is back", func() bool {
		resp, _ := a.Do(t, "DELETE", "/v1/keys/"+doomed.Key.ID, root.Secret, "")
		revoked = resp.StatusCode == http.StatusOK
		return revoked || resp.StatusCode != http.StatusServiceUnavailable
	})
	if !revoked {
		t.Fatal("A could not revoke the key after NATS came back")
	}
	resp, body = a.Do(t, "PATCH", "/v1/admin/tenants/"+tn.ID, ops, `{"tier":"free"}`)
	mustStatus(t, resp, body, http.StatusOK)
	resp, body = b.Do(t, "GET", "/v1/tenant", doomed.Secret, "")
	mustStatus(t, resp, body, http.StatusOK) // B, still away: the last known state
	// B's connection comes back: its watches resume and apply what it missed.
	start := time.Now()
	proxy.Route(backend, "")
	pollUntil(t, "B to apply the revoke and the downgrade made while it was away", func() bool {
		r1, _ := b.Do(t, "GET", "/v1/tenant", doomed.Secret, "")
		r2, body := b.Do(t, "GET", "/v1/tenant", root.Secret, "")
		return r1.StatusCode == http.StatusUnauthorized && r2.StatusCode == http.StatusOK && decode[apiTenant](t, body).Tier == "free"
	})
	t.Logf("B applied the changes made while it was away %v after its connection came back", time.Since(start))
	pollUntil(t, "B's control plane back to ok", func() bool {
		pub, _ := getJSON(t, b.URL+"/health/saas")
		return part(pub, "control_plane")["status"] == "ok"
	})
	// And B writes again.
	resp, body = b.Do(t, "POST", "/v1/keys", root.Secret, `{"name":"after","scopes":["read"]}`)
	mustStatus(t, resp, body, http.StatusOK)
}

func fst[A, B any](a A, _ B) A { return a }
