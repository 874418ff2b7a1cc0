package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kgents/kgents-go/tenancy"
)

// Dev keys and their tenants (KGENTS_DEV_KEYS=true).
const (
	Alice = "kg_dev_alice" // free: the quota worker's
	Bob   = "kg_dev_bob"   // pro
	Carol = "kg_dev_carol" // enterprise
)

// QuotaPerDay is the FREE tier's daily request limit in the cluster tests
// (QuotaTiers): the quota worker reaches it during a fault.
const QuotaPerDay = 400

// TenantOf is the tenant id of a dev key.
func TenantOf(key string) string {
	switch key {
	case Alice:
		return tenancy.DevTenantFree
	case Bob:
		return tenancy.DevTenantPro
	case Carol:
		return tenancy.DevTenantEnterprise
	}
	return "?"
}

// Route templates, as metered.
const (
	RouteDialogue = "/v1/soul/dialogue"
	RouteSessions = "/v1/kgent/sessions"
	RouteMessages = "/v1/kgent/sessions/{session_id}/messages"
	RouteEvents   = "/v1/kgent/sessions/{session_id}/events"
)

// Call is one request as the client saw it.
type Call struct {
	Worker     int
	Start, End time.Time
	Status     int // 0: no answer (transport error)
}

// Load is mixed traffic over a cluster's replicas — one-shot dialogue (as
// Bob), unary session turns (as Carol, each worker on a session of its own)
// and one watcher per session — recording what the client saw: every
// answered call by tenant, route and status, every acknowledged reply, every
// event id a watcher received.
type Load struct {
	c    *Cluster
	next atomic.Uint64

	mu       sync.Mutex
	calls    []Call
	served   Tally               // "tenant route status"
	acked    map[string][]string // session → acknowledged assistant message ids
	watched  map[string][]uint64 // session → event ids in the order received
	watchRes map[string]int      // session → watch (re)connections
	// attempts are each session's ended watch connections, for the report
	// of a gap: which replica, from which Last-Event-ID, which ids it sent.
	attempts map[string][]watchAttempt
	// unanswered counts calls without an answer, "tenant route".
	unanswered Tally
	errs       []string
	// quotaOK and quotaRefused count the quota worker's admitted and
	// refused (429) calls.
	quotaOK, quotaRefused int
	// toldToRetry counts the answers that asked for a retry (a 409 with
	// Retry-After: the session looked busy), retried as the client is
	// told; they are not failures (Call) but are reported.
	toldToRetry int
}

// NewLoad prepares load on c.
func NewLoad(c *Cluster) *Load {
	return &Load{c: c, served: Tally{}, acked: map[string][]string{}, watched: map[string][]uint64{}, watchRes: map[string]int{}, attempts: map[string][]watchAttempt{}, unanswered: Tally{}}
}

// Use sends the load's further calls (and Verify's) to c: the same
// clients on another cluster, e.g. one restored from a backup.
func (l *Load) Use(c *Cluster) {
	l.mu.Lock()
	l.c = c
	l.mu.Unlock()
}

func (l *Load) cluster() *Cluster {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c
}

// pick returns the next running replica, round robin.
func (l *Load) pick() *Replica {
	c := l.cluster()
	for range len(c.Replicas) * 2 {
		r := c.Replicas[int(l.next.Add(1))%len(c.Replicas)]
		if r.Pid() != 0 {
			return r
		}
	}
	return c.Replicas[0]
}

// Record counts an answered call as served.
func (l *Load) Record(key, route string, status int) {
	l.mu.Lock()
	l.served[fmt.Sprintf("%s %s %d", TenantOf(key), route, status)]++
	l.mu.Unlock()
}

func (l *Load) call(ctx context.Context, worker int, key, route, method, path, body string, out any) (int, error) {
	code, _, err := l.callRetry(ctx, worker, key, route, method, path, body, out)
	return code, err
}

// maxRetryAfter bounds a Retry-After the load honours.
const maxRetryAfter = 5 * time.Second

// callRetry is call, also returning how long the answer asked the client
// to wait before retrying (a 409 with Retry-After; 0 otherwise). Such an
// answer is counted in toldToRetry, not as a failed Call.
func (l *Load) callRetry(ctx context.Context, worker int, key, route, method, path, body string, out any) (int, time.Duration, error) {
	// Stopping the load lets calls in flight finish: a call the client
	// gave up on could be served and billed without the client knowing.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	start := time.Now()
	code, b, h, err := l.pick().DoHeader(rctx, method, path, key, body, out)
	end := time.Now()
	var retryAfter time.Duration
	if code == http.StatusConflict && h != nil {
		if secs, perr := strconv.Atoi(h.Get("Retry-After")); perr == nil && secs >= 0 {
			retryAfter = min(time.Duration(secs)*time.Second, maxRetryAfter)
		}
	}
	l.mu.Lock()
	switch {
	case retryAfter > 0:
		l.toldToRetry++
	case worker != quotaWorker: // its 429s are the point, not failures
		l.calls = append(l.calls, Call{Worker: worker, Start: start, End: end, Status: code})
	}
	if code != 0 {
		l.served[fmt.Sprintf("%s %s %d", TenantOf(key), route, code)]++
	} else {
		// No answer (the client gave up or the connection broke): the
		// server may or may not have served and billed it.
		l.unanswered[TenantOf(key)+" "+route]++
	}
	if code != 0 && code != http.StatusOK && worker != quotaWorker && retryAfter == 0 && len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf("%s %s: %d %.200s", method, path, code, b))
	}
	l.mu.Unlock()
	return code, retryAfter, err
}

// ToldToRetry is how many answers asked the client to retry later (409
// with Retry-After), each retried after the delay it gave.
func (l *Load) ToldToRetry() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.toldToRetry
}

// Run runs dialogue workers and session workers (each with a watcher) until
// ctx ends, then waits for them.
func (l *Load) Run(ctx context.Context, dialogue, sessions int) error {
	var wg sync.WaitGroup
	setup, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := make([]string, sessions)
	for i := range ids {
		var s struct {
			ID string `json:"id"`
		}
		code, err := l.call(setup, -1, Carol, RouteSessions, "POST", "/v1/kgent/sessions", `{"title":"cluster load"}`, &s)
		if err != nil || code != http.StatusOK {
			return callErr("create session", code, err)
		}
		ids[i] = s.ID
	}
	for w := range dialogue {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				code, _ := l.call(ctx, w, Bob, RouteDialogue, "POST", RouteDialogue, fmt.Sprintf(`{"prompt":"worker %d call %d"}`, w, i), nil)
				if code != http.StatusOK {
					pause(ctx, 20*time.Millisecond)
				}
			}
		})
	}
	for w, id := range ids {
		worker := dialogue + w
		wg.Go(func() { l.watch(ctx, id) })
		wg.Go(func() {
			path := "/v1/kgent/sessions/" + id + "/messages"
			for i := 0; ctx.Err() == nil; i++ {
				var m struct {
					ID   string `json:"id"`
					Role string `json:"role"`
				}
				code, retryAfter, _ := l.callRetry(ctx, worker, Carol, RouteMessages, "POST", path, fmt.Sprintf(`{"message":"turn %d","stream":false}`, i), &m)
				switch {
				case code == http.StatusOK:
					l.mu.Lock()
					l.acked[id] = append(l.acked[id], m.ID)
					l.mu.Unlock()
				case retryAfter > 0:
					// A session still busy with its last turn as some
					// replica sees it (its release is in a spool during
					// a failover): wait as told.
					pause(ctx, retryAfter)
				default:
					pause(ctx, 20*time.Millisecond)
				}
			}
		})
	}
	// The quota worker: one dialogue call every 20 ms as Alice (FREE,
	// QuotaPerDay a day), round robin over the replicas, past the limit.
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			code, _ := l.call(ctx, quotaWorker, Alice, RouteDialogue, "POST", RouteDialogue, fmt.Sprintf(`{"prompt":"quota call %d"}`, i), nil)
			l.mu.Lock()
			switch code {
			case http.StatusOK:
				l.quotaOK++
			case http.StatusTooManyRequests:
				l.quotaRefused++
			}
			l.mu.Unlock()
			pause(ctx, 20*time.Millisecond)
		}
	})
	wg.Wait()
	return nil
}

// quotaWorker is the quota worker's number in Call.Worker.
const quotaWorker = -3

// QuotaCalls is how many of the quota worker's calls were admitted and
// refused (429).
func (l *Load) QuotaCalls() (admitted, refused int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.quotaOK, l.quotaRefused
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// watch follows a session until ctx ends, reconnecting (to any replica)
// with Last-Event-ID after every drop, as EventSource does.
func (l *Load) watch(ctx context.Context, id string) {
	var last uint64
	for ctx.Err() == nil {
		headers := []string{}
		if last > 0 {
			headers = append(headers, "Last-Event-ID", strconv.FormatUint(last, 10))
		}
		r := l.pick()
		sse, closeIt, err := r.Stream(ctx, "GET", "/v1/kgent/sessions/"+id+"/events", Carol, "", headers...)
		if err != nil {
			var se *StatusError
			l.mu.Lock()
			if errors.As(err, &se) {
				l.watchRes[id]++ // refused (a 503 during an election, say): answered and metered
			} else {
				l.unanswered[TenantOf(Carol)+" "+RouteEvents]++ // may or may not have been metered
			}
			l.mu.Unlock()
			pause(ctx, 50*time.Millisecond)
			continue
		}
		l.mu.Lock()
		l.watchRes[id]++
		l.mu.Unlock()
		a := watchAttempt{replica: r.Name, at: time.Now(), after: last}
		for {
			ev, err := sse.Next()
			if err != nil {
				a.end = err.Error()
				break
			}
			if ev.ID == "" {
				continue
			}
			n, err := strconv.ParseUint(ev.ID, 10, 64)
			if err != nil {
				continue
			}
			last = n
			l.mu.Lock()
			l.watched[id] = append(l.watched[id], n)
			l.mu.Unlock()
			a.note(n)
		}
		closeIt()
		l.mu.Lock()
		l.attempts[id] = append(l.attempts[id], a)
		l.mu.Unlock()
	}
}

// Served is what the clients were answered, "tenant route status". Watch
// streams are counted under status "*" (their status is settled when they end).
func (l *Load) Served() Tally {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := Tally{}
	for k, v := range l.served {
		out[k] = v
	}
	for id, n := range l.watchRes {
		_ = id
		out[fmt.Sprintf("%s %s *", TenantOf(Carol), RouteEvents)] += n
	}
	return out
}

// Unanswered is the calls the client got no answer to, "tenant route":
// each may have been billed.
func (l *Load) Unanswered() Tally {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := Tally{}
	for k, v := range l.unanswered {
		out[k] = v
	}
	return out
}

// BillingDiff is Diff(served, billed) less the differences unanswered
// calls explain: per tenant and route, billed may exceed served by at most
// the unanswered calls, and never fall short.
func BillingDiff(served, billed, unanswered Tally) []string {
	excess := Tally{}
	var out []string
	out = append(out, Diff(served, billed)...)
	if len(out) == 0 {
		return nil
	}
	// Recompute per key with the allowance.
	out = out[:0]
	keys := map[string]bool{}
	for k := range served {
		keys[k] = true
	}
	for k := range billed {
		keys[k] = true
	}
	for k := range keys {
		tr := routeKey(k)
		d := billed[k] - served[k]
		switch {
		case d < 0:
			out = append(out, fmt.Sprintf("%s: served %d, billed %d (lost)", k, served[k], billed[k]))
		case d > 0:
			excess[tr] += d
		}
	}
	for tr, d := range excess {
		if d > unanswered[tr] {
			out = append(out, fmt.Sprintf("%s: %d billed beyond what was served, %d calls unanswered (billed twice?)", tr, d, unanswered[tr]))
		}
	}
	sort.Strings(out)
	return out
}

// routeKey is "tenant route" of "tenant route status".
func routeKey(k string) string {
	for i := len(k) - 1; i >= 0; i-- {
		if k[i] == ' ' {
			return k[:i]
		}
	}
	return k
}

// Billed maps the stand-in's api.request tally to Served's keys.
func Billed(om *OpenMeter) Tally { return BilledOf(om.Events()) }

// BilledOf is Billed of a set of events (distinct ids).
func BilledOf(events []BilledEvent) Tally {
	out := Tally{}
	for _, e := range events {
		if e.Type != "api.request" {
			continue
		}
		status := fmt.Sprint(e.Data["status_code"])
		if e.Data["endpoint"] == RouteEvents {
			status = "*"
		}
		out[fmt.Sprintf("%s %v %s", e.Subject, e.Data["endpoint"], status)]++
	}
	return out
}

// Calls is every recorded call.
func (l *Load) Calls() []Call {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Call(nil), l.calls...)
}

// Errors is a sample of failed answers.
func (l *Load) Errors() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.errs...)
}

// Outages are, per worker, the spans from the start of a failed call to the
// end of the next successful one: how long a client could not get through.
func Outages(calls []Call) []time.Duration {
	byWorker := map[int][]Call{}
	for _, c := range calls {
		byWorker[c.Worker] = append(byWorker[c.Worker], c)
	}
	var out []time.Duration
	for _, cs := range byWorker {
		sort.Slice(cs, func(i, j int) bool { return cs[i].Start.Before(cs[j].Start) })
		var failStart time.Time
		for _, c := range cs {
			ok := c.Status == http.StatusOK
			switch {
			case !ok && failStart.IsZero():
				failStart = c.Start
			case ok && !failStart.IsZero():
				out = append(out, c.End.Sub(failStart))
				failStart = time.Time{}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Quantile of sorted durations (0 when empty).
func Quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(q * float64(len(d)-1))
	return d[i]
}

// Verify checks, through the API, that every acknowledged reply is in its
// session's history and that every watcher received each of its session's
// events once, in order, with no gap against a fresh replay from the start.
func (l *Load) Verify(ctx context.Context) error {
	l.mu.Lock()
	acked := map[string][]string{}
	for k, v := range l.acked {
		acked[k] = append([]string(nil), v...)
	}
	watched := map[string][]uint64{}
	for k, v := range l.watched {
		watched[k] = append([]uint64(nil), v...)
	}
	l.mu.Unlock()
	var errs []error
	for id, want := range acked {
		have := map[string]bool{}
		total, err := 0, error(nil)
		for offset := 0; offset <= total && offset < 100000; offset += 100 {
			var hist struct {
				Messages []struct {
					ID string `json:"id"`
				} `json:"messages"`
				Total int `json:"total"`
			}
			path := fmt.Sprintf("/v1/kgent/sessions/%s/messages?limit=100&offset=%d", id, offset)
			err = PollCtx(ctx, 30*time.Second, func() error {
				code, err := l.call(ctx, -2, Carol, RouteMessages, "GET", path, "", &hist)
				if err != nil || code != http.StatusOK {
					return callErr("history of "+id, code, err)
				}
				return nil
			})
			if err != nil {
				break
			}
			total = hist.Total
			for _, m := range hist.Messages {
				have[m.ID] = true
			}
			if len(hist.Messages) == 0 {
				break
			}
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		lost := 0
		for _, m := range want {
			if !have[m] {
				lost++
			}
		}
		if lost > 0 {
			errs = append(errs, fmt.Errorf("session %s: %d of %d acknowledged replies missing from its history (%d messages)", id, lost, len(want), len(have)))
		}
		// The watcher: strictly increasing, and every id a full replay has
		// up to the watcher's last one.
		got := watched[id]
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				errs = append(errs, fmt.Errorf("session %s: watcher got event %d after %d (duplicate or out of order)", id, got[i], got[i-1]))
				break
			}
		}
		if len(got) == 0 {
			continue
		}
		full, err := l.replay(ctx, id, got[len(got)-1])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		seen := map[uint64]bool{}
		for _, n := range got {
			seen[n] = true
		}
		missing := 0
		for _, n := range full {
			if !seen[n] {
				missing++
			}
		}
		if missing > 0 {
			l.mu.Lock()
			tried := attemptsReport(l.attempts[id])
			l.mu.Unlock()
			errs = append(errs, fmt.Errorf("session %s: the watcher missed %d of %d events (gap): %s; its connections: %s",
				id, missing, len(full), missingRuns(full, seen), tried))
		}
	}
	return errors.Join(errs...)
}

// replay reads a session's events from the start up to id upto.
func (l *Load) replay(ctx context.Context, id string, upto uint64) ([]uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	sse, closeIt, err := l.pick().Stream(ctx, "GET", "/v1/kgent/sessions/"+id+"/events", Carol, "")
	if err != nil {
		return nil, err
	}
	defer closeIt()
	l.mu.Lock()
	l.watchRes[id]++
	l.mu.Unlock()
	var out []uint64
	for {
		ev, err := sse.Next()
		if err != nil {
			return out, fmt.Errorf("replay of %s after %d events: %w", id, len(out), err)
		}
		n, err := strconv.ParseUint(ev.ID, 10, 64)
		if err != nil {
			continue
		}
		out = append(out, n)
		if n >= upto {
			return out, nil
		}
	}
}

// UsageTenant reads a key's tenant from GET /v1/usage (a check that the dev
// keys are what TenantOf says).
func UsageTenant(ctx context.Context, r *Replica, key string) (string, error) {
	var u struct {
		TenantID string `json:"tenant_id"`
	}
	code, b, err := r.Do(ctx, "GET", "/v1/usage", key, "", &u)
	if err != nil || code != http.StatusOK {
		return "", fmt.Errorf("%w: %s", callErr("usage", code, err), b)
	}
	_ = json.Valid(b)
	return u.TenantID, nil
}

// callErr describes a failed call: its error, or the status it answered.
func callErr(what string, code int, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: status %d", what, code)
}

// watchAttempt is one watch connection of the load's watcher.
type watchAttempt struct {
	replica     string
	at          time.Time
	after       uint64 // the Last-Event-ID sent (0: none)
	first, last uint64 // the ids received (0: none)
	n           int
	jumps       []string // ids received after a gap ("from→to")
	end         string   // why it ended
}

func (a *watchAttempt) note(id uint64) {
	if a.n == 0 {
		a.first = id
	} else if id > a.last+1 && len(a.jumps) < 8 {
		a.jumps = append(a.jumps, fmt.Sprintf("%d→%d", a.last, id))
	}
	a.last = id
	a.n++
}

// attemptsReport lists a watcher's connections that received events, and
// how many received none.
func attemptsReport(as []watchAttempt) string {
	var b strings.Builder
	empty := 0
	for _, a := range as {
		if a.n == 0 {
			empty++
			continue
		}
		fmt.Fprintf(&b, "[%s %s after=%d got %d..%d (%d)", a.replica, a.at.Format("15:04:05.000"), a.after, a.first, a.last, a.n)
		if len(a.jumps) > 0 {
			fmt.Fprintf(&b, " jumps %v", a.jumps)
		}
		fmt.Fprintf(&b, " end %q] ", a.end)
	}
	fmt.Fprintf(&b, "and %d that received nothing", empty)
	return b.String()
}

// missingRuns lists the ids of full that seen lacks, as ranges.
func missingRuns(full []uint64, seen map[uint64]bool) string {
	var runs []string
	for i := 0; i < len(full); i++ {
		if seen[full[i]] {
			continue
		}
		j := i
		for j+1 < len(full) && !seen[full[j+1]] {
			j++
		}
		runs = append(runs, fmt.Sprintf("%d–%d", full[i], full[j]))
		i = j
	}
	return "missing " + strings.Join(runs, ", ")
}
