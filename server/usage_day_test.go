package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/server"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// billedStandIn stands in for OpenMeter: it keeps each event id once (as
// OpenMeter's dedupe does) and adds it to the meters of its tenant and UTC
// day — a count per event type, the sum of tokens_total, the api.request
// calls with a status ≥ 400 — and refuses (400) every batch holding an
// AGENTESE invocation of void.entropy, whose events the sink then
// dead-letters: they are not billed.
type billedStandIn struct {
	mu       sync.Mutex
	seen     map[string]bool
	meters   map[string]*billing.Counts // tenant/YYYY-MM-DD
	refusals int
}

func (o *billedStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	var batch []struct {
		ID      string    `json:"id"`
		Type    string    `json:"type"`
		Subject string    `json:"subject"`
		Time    time.Time `json:"time"`
		Data    struct {
			StatusCode  int    `json:"status_code"`
			TokensTotal int64  `json:"tokens_total"`
			Path        string `json:"path"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range batch {
		if e.Type == billing.TypeAgenteseInvoke && strings.HasPrefix(e.Data.Path, "void.entropy") {
			o.refusals++
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = fmt.Fprintf(w, `{"type":"about:blank","title":"Bad Request","status":400,"detail":"event %s: path not allowed"}`, e.ID)
			return
		}
	}
	for _, e := range batch {
		if o.seen[e.ID] {
			continue
		}
		o.seen[e.ID] = true
		k := e.Subject + "/" + e.Time.UTC().Format(time.DateOnly)
		c := o.meters[k]
		if c == nil {
			c = &billing.Counts{ByType: map[string]int64{}}
			o.meters[k] = c
		}
		c.ByType[e.Type]++
		switch e.Type {
		case billing.TypeAPIRequest:
			c.Requests++
			if e.Data.StatusCode >= 400 {
				c.Errors++
			}
		case billing.TypeLLMTokens:
			c.DialogueTurns++
			c.Tokens += e.Data.TokensTotal
		case billing.TypeAgenteseInvoke:
			c.AgenteseInvocations++
		case billing.TypeSessionCreate:
			c.SessionsCreated++
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (o *billedStandIn) snapshot() (map[string]billing.Counts, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]billing.Counts, len(o.meters))
	for k, c := range o.meters {
		cp := *c
		cp.ByType = maps.Clone(c.ByType)
		out[k] = cp
	}
	return out, o.refusals
}

// dayClock is the time the test says it is, for the events' timestamps.
type dayClock struct{ ns atomic.Int64 }

func (c *dayClock) set(t time.Time) { c.ns.Store(t.UnixNano()) }
func (c *dayClock) Now() time.Time  { return time.Unix(0, c.ns.Load()).UTC() }
func (c *dayClock) String() string  { return c.Now().Format(time.RFC3339) }
func sameCounts(a, b billing.Counts) bool {
	return a.Requests == b.Requests && a.Errors == b.Errors && a.Tokens == b.Tokens && a.DialogueTurns == b.DialogueTurns &&
		a.AgenteseInvocations == b.AgenteseInvocations && a.SessionsCreated == b.SessionsCreated && maps.Equal(a.ByType, b.ByType)
}

// A day of mixed traffic from three tenants — dialogue (tokens), sessions
// and their messages, AGENTESE, refused calls, Idempotency-Key replays,
// usage reads — with its event times spread over 24 hours, through two
// replicas sharing an external NATS that is stopped and restarted in the
// middle of the day (calls go on meanwhile, their events spooled), and one
// replica, with its OpenMeter sink and rollup, replaced later. OpenMeter
// refuses one kind of event (dead letters). Afterwards the usage history
// equals what the OpenMeter stand-in billed, per tenant, day and event
// type, with the token sums and error counts; and each probe call is in
// the history within 5 s of returning (the rollup's lag, SPEC §4.14).
func TestUsageHistoryEqualsBilledOverADay(t *testing.T) {
	t.Parallel()
	om := &billedStandIn{seen: map[string]bool{}, meters: map[string]*billing.Counts{}}
	omSrv := httptest.NewServer(om)
	defer omSrv.Close()
	nats := natstest.Start(t)
	_, js := nats.Connect(t)
	clock := &dayClock{}
	day := time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC)
	probeDay := day.Add(24 * time.Hour)
	clock.set(day)
	env := map[string]string{
		"NATS_SERVERS": nats.URL(), "OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": omSrv.URL,
		"OPENMETER_API_KEY": "k", "OPENMETER_FLUSH_INTERVAL": "50ms",
	}
	start := func(name string) *servertest.Instance {
		e := maps.Clone(env)
		e["KGENTS_REPLICA_NAME"] = name
		return servertest.StartWith(t, e, server.Options{EventClock: clock.Now})
	}
	replicas := []*servertest.Instance{start("a"), start("b")}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	history := billing.NewRollup(js, billing.RollupConfig{Logger: slog.New(slog.DiscardHandler)})
	requestsIn := func(tenant string, hour time.Time) int64 {
		pts, err := history.History(ctx, tenant, hour, hour.Add(time.Hour), billing.Hourly)
		if err != nil || len(pts) != 1 {
			return -1
		}
		return pts[0].Requests
	}

	keys := []string{bob, carol, "kg_dev_ops"}
	tenantOf := map[string]string{bob: "00000000-0000-0000-0000-000000000001", carol: "00000000-0000-0000-0000-000000000003",
		"kg_dev_ops": "00000000-0000-0000-0000-000000000004"}
	sessions := map[string]string{}
	statuses := map[int]int{}
	const steps = 240 // one call every 6 minutes of the day
	var lags []time.Duration
	probes := 0
	for i := range steps {
		switch i {
		case 80:
			nats.Stop() // calls go on; their events wait in each replica's spool
		case 92:
			nats.Restart()
		case 160:
			// Replace replica b: its OpenMeter sink and rollup stop (handing
			// back what they hold) and a new one starts.
			if err := replicas[1].Stop(); err != nil {
				t.Fatalf("stopping replica b: %v", err)
			}
			replicas[1] = start("b2")
		}
		clock.set(day.Add(time.Duration(i) * 24 * time.Hour / steps))
		in, key := replicas[i%2], keys[i%3]
		var r *http.Response
		switch i % 8 {
		case 0:
			r, _ = in.Do(t, "POST", "/v1/soul/dialogue", key, fmt.Sprintf(`{"prompt":"plan step %d"}`, i))
		case 1:
			var body []byte
			r, body = in.Do(t, "POST", "/v1/kgent/sessions", key, `{}`)
			var s session
			if r.StatusCode == http.StatusOK && json.Unmarshal(body, &s) == nil {
				sessions[key] = s.ID
			}
		case 2:
			if id := sessions[key]; id != "" {
				r, _ = in.Do(t, "POST", "/v1/kgent/sessions/"+id+"/messages", key, `{"message":"how is it going","stream":false}`)
			} else {
				r, _ = in.Do(t, "POST", "/v1/soul/dialogue", key, `{"prompt":"no session yet"}`)
			}
		case 3:
			r, _ = in.Do(t, "POST", "/v1/agentese/invoke", key, `{"path":"world.house.manifest"}`)
		case 4:
			r, _ = in.Do(t, "POST", "/v1/agentese/invoke", key, `{"path":"void.entropy.manifest"}`) // OpenMeter refuses its events
		case 5:
			r, _ = in.Do(t, "POST", "/v1/soul/dialogue", key, `{"prompt":"x","mode":"nope"}`) // 400: billed as an error
		case 6:
			k := fmt.Sprintf("day-%d", i)
			r, _ = in.Do(t, "POST", "/v1/kgent/sessions", key, `{}`, "Idempotency-Key", k)
			r2, _ := in.Do(t, "POST", "/v1/kgent/sessions", key, `{}`, "Idempotency-Key", k) // a replay: billed once
			statuses[r2.StatusCode]++
		default:
			r, _ = in.Do(t, "GET", "/v1/usage", key, "")
		}
		statuses[r.StatusCode]++

		// A probe (NATS up): one call alone in an hour of the next day, so
		// its bucket shows exactly when its api.request is in.
		if i%12 == 6 && nats.Running() {
			hour := probeDay.Add(time.Duration(probes) * time.Hour)
			probes++
			clock.set(hour.Add(30 * time.Minute))
			r, body := in.Do(t, "POST", "/v1/soul/dialogue", key, `{"prompt":"probe"}`)
			mustStatus(t, r, body, http.StatusOK)
			returned := time.Now()
			for requestsIn(tenantOf[key], hour) < 1 {
				if time.Since(returned) > 20*time.Second {
					t.Fatalf("probe %d (step %d) not in the history after 20 s", probes, i)
				}
				time.Sleep(5 * time.Millisecond) // polling a real read; the wait is what is measured
			}
			lags = append(lags, time.Since(returned))
		}
	}
	if statuses[http.StatusOK] < steps/2 {
		t.Fatalf("statuses %v: most calls should have succeeded", statuses)
	}

	// Everything sent: wait for OpenMeter and the history to agree.
	tenants := slices.Collect(maps.Values(tenantOf))
	deadline := time.Now().Add(90 * time.Second)
	var billed map[string]billing.Counts
	var refusals int
	for {
		var diff []string
		billed, refusals = om.snapshot()
		for _, tenant := range tenants {
			for _, d := range []time.Time{day, probeDay} {
				want := billed[tenant+"/"+d.Format(time.DateOnly)]
				pts, err := history.History(ctx, tenant, d, d.Add(24*time.Hour), billing.Daily)
				if err != nil || len(pts) != 1 {
					diff = append(diff, fmt.Sprintf("%s %s: %v", tenant, d.Format(time.DateOnly), err))
					continue
				}
				got := pts[0].Counts
				hours, err := history.History(ctx, tenant, d, d.Add(24*time.Hour), billing.Hourly)
				var sum billing.Counts
				for _, p := range hours {
					sum.Requests += p.Requests
					sum.Errors += p.Errors
					sum.Tokens += p.Tokens
					sum.DialogueTurns += p.DialogueTurns
					sum.AgenteseInvocations += p.AgenteseInvocations
					sum.SessionsCreated += p.SessionsCreated
					for k, v := range p.ByType {
						if sum.ByType == nil {
							sum.ByType = map[string]int64{}
						}
						sum.ByType[k] += v
					}
				}
				if want.ByType == nil {
					want.ByType = map[string]int64{}
				}
				if got.ByType == nil {
					got.ByType = map[string]int64{}
				}
				if sum.ByType == nil {
					sum.ByType = map[string]int64{}
				}
				if err != nil || !sameCounts(got, want) || !sameCounts(sum, want) {
					diff = append(diff, fmt.Sprintf("%s %s:\n  history %+v\n  hours   %+v\n  billed  %+v", tenant, d.Format(time.DateOnly), got, sum, want))
				}
			}
		}
		if len(diff) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the usage history differs from what OpenMeter billed:\n%s", strings.Join(diff, "\n"))
		}
		time.Sleep(200 * time.Millisecond) // polling real reads, bounded by the deadline
	}

	// The day really was mixed and really went through each path.
	var all billing.Counts
	for k, c := range billed {
		if strings.HasSuffix(k, day.Format(time.DateOnly)) {
			all.Requests += c.Requests
			all.Errors += c.Errors
			all.Tokens += c.Tokens
			all.DialogueTurns += c.DialogueTurns
			all.AgenteseInvocations += c.AgenteseInvocations
			all.SessionsCreated += c.SessionsCreated
		}
	}
	if all.Errors == 0 || all.Tokens == 0 || all.DialogueTurns == 0 || all.AgenteseInvocations == 0 || all.SessionsCreated == 0 {
		t.Errorf("the day's billed usage is not mixed: %+v", all)
	}
	if refusals == 0 {
		t.Error("OpenMeter refused nothing: the dead-letter path was not exercised")
	}
	stream, err := js.Stream(ctx, billing.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(billing.DeadSubjectPrefix+">"))
	if err != nil {
		t.Fatal(err)
	}
	dead := 0
	for _, n := range info.State.Subjects {
		dead += int(n)
	}
	if dead == 0 {
		t.Error("no dead letters in the stream")
	}
	hours := map[int]bool{}
	for i := range steps {
		hours[day.Add(time.Duration(i)*24*time.Hour/steps).Hour()] = true
	}
	if len(hours) != 24 {
		t.Errorf("traffic covered %d hours, want 24", len(hours))
	}

	slices.Sort(lags)
	if len(lags) < 15 {
		t.Fatalf("only %d lag probes", len(lags))
	}
	t.Logf("a day of traffic: %d steps, statuses %v; billed on the day: %d requests (%d errors), %d turns (%d tokens), %d invocations, %d sessions; %d dead letters; history == billed",
		steps, statuses, all.Requests, all.Errors, all.DialogueTurns, all.Tokens, all.AgenteseInvocations, all.SessionsCreated, dead)
	t.Logf("rollup lag (call returned → in the history), %d probes: min %v, median %v, max %v",
		len(lags), lags[0].Round(time.Millisecond), lags[len(lags)/2].Round(time.Millisecond), lags[len(lags)-1].Round(time.Millisecond))
	if worst := lags[len(lags)-1]; worst >= 5*time.Second {
		t.Errorf("rollup lag %v, SPEC §4.14 wants under 5 s", worst)
	}
}
