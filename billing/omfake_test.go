package billing

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// fakeOpenMeter is a real HTTP server standing in for OpenMeter's ingestion
// API. It validates every request as OpenMeter would (and records what it
// does not like as a violation, which fails the test), dedupes accepted
// events by id as OpenMeter does, and counts raw deliveries too. It can be
// scripted to answer 429, 500 or 400, to hang, or to go away entirely.
type fakeOpenMeter struct {
	t testing.TB

	mu         sync.Mutex
	key        string
	srv        *httptest.Server
	addr       string
	script     []fakeAction
	always     *fakeAction
	accepted   map[string]int       // id → times accepted
	order      []string             // ids in first-acceptance order
	firstAt    map[string]time.Time // id → when first accepted
	raw        int                  // events accepted, duplicates included
	requests   []time.Time          // arrival of every request
	maxBatch   int
	violations []string
	// light skips the per-event checks (for the benchmark, where the
	// stand-in shares the CPU with what it measures); ids are still read.
	light bool
	// nonAtomic takes the events before a poison one, then answers 400, as
	// OpenMeter's ingestion does (it stops at the first bad event).
	nonAtomic bool
}

// fakeAction is how the stand-in answers one request.
type fakeAction struct {
	status     int           // 0: normal processing (204, or 400 on poison)
	retryAfter string        // Retry-After header of a 429
	hang       time.Duration // wait this long (or until the client gives up), then 503
}

// poisonSubject marks an event the stand-in rejects with 400.
const poisonSubject = "poison"

func newFakeOpenMeter(t testing.TB, key string) *fakeOpenMeter {
	f := &fakeOpenMeter{t: t, key: key, accepted: map[string]int{}, firstAt: map[string]time.Time{}}
	f.srv = httptest.NewServer(f)
	f.addr = f.srv.Listener.Addr().String()
	t.Cleanup(f.close)
	return f
}

// URL is the base URL to configure.
func (f *fakeOpenMeter) URL() string { return "http://" + f.addr }

func (f *fakeOpenMeter) close() {
	f.mu.Lock()
	srv := f.srv
	f.srv = nil
	f.mu.Unlock()
	if srv != nil {
		srv.CloseClientConnections()
		srv.Close()
	}
}

// down closes the listener: clients get "connection refused".
func (f *fakeOpenMeter) down() { f.close() }

// up listens again on the same address.
func (f *fakeOpenMeter) up() {
	f.t.Helper()
	var l net.Listener
	var err error
	for range 50 {
		if l, err = net.Listen("tcp", f.addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		f.t.Fatalf("fake openmeter: listen again on %s: %v", f.addr, err)
	}
	srv := httptest.NewUnstartedServer(f)
	_ = srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	f.mu.Lock()
	f.srv = srv
	f.mu.Unlock()
}

// then queues answers for the next requests (after that: normal processing).
func (f *fakeOpenMeter) then(actions ...fakeAction) {
	f.mu.Lock()
	f.script = append(f.script, actions...)
	f.mu.Unlock()
}

// setAlways makes every request get a (nil: back to normal).
func (f *fakeOpenMeter) setAlways(a *fakeAction) {
	f.mu.Lock()
	f.always = a
	f.mu.Unlock()
}

func (f *fakeOpenMeter) setKey(key string) {
	f.mu.Lock()
	f.key = key
	f.mu.Unlock()
}

func (f *fakeOpenMeter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, time.Now())
	key := f.key
	var act fakeAction
	switch {
	case f.always != nil:
		act = *f.always
	case len(f.script) > 0:
		act, f.script = f.script[0], f.script[1:]
	}
	light, nonAtomic := f.light, f.nonAtomic
	f.mu.Unlock()

	if r.Header.Get("Authorization") != "Bearer "+key {
		problem(w, http.StatusUnauthorized, "invalid API key "+r.Header.Get("Authorization"))
		return
	}
	events, err := f.check(r, light)
	if err != nil {
		f.violate(err.Error())
		problem(w, http.StatusBadRequest, err.Error())
		return
	}
	if act.hang > 0 {
		select {
		case <-time.After(act.hang):
		case <-r.Context().Done():
		}
		problem(w, http.StatusServiceUnavailable, "hung")
		return
	}
	if act.status != 0 {
		if act.retryAfter != "" {
			w.Header().Set("Retry-After", act.retryAfter)
		}
		problem(w, act.status, fmt.Sprintf("scripted %d", act.status))
		return
	}
	for i, ev := range events {
		if ev.Subject == poisonSubject {
			if nonAtomic {
				f.accept(events[:i])
			}
			problem(w, http.StatusBadRequest, "event "+ev.ID+": meter value is not a number")
			return
		}
	}
	f.accept(events)
	w.WriteHeader(http.StatusNoContent)
}

// fakeEvent is what the stand-in reads of each event.
type fakeEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Source      string          `json:"source"`
	Type        string          `json:"type"`
	Subject     string          `json:"subject"`
	Time        string          `json:"time"`
	Data        json.RawMessage `json:"data"`
}

// check validates the request as OpenMeter's ingestion API would.
func (f *fakeOpenMeter) check(r *http.Request, light bool) ([]fakeEvent, error) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v1/events" {
		return nil, fmt.Errorf("%s %s, want POST /api/v1/events", r.Method, r.URL.Path)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/cloudevents-batch+json" {
		return nil, fmt.Errorf("content type %q", ct)
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	var events []fakeEvent
	if err := json.Unmarshal(body, &events); err != nil {
		return nil, fmt.Errorf("body is not a JSON array of events: %w", err)
	}
	if len(events) == 0 {
		return nil, fmt.Errorf("empty batch")
	}
	if light {
		return events, nil
	}
	for i, ev := range events {
		if err := checkEvent(ev); err != nil {
			return nil, fmt.Errorf("event %d (%s): %w", i, ev.ID, err)
		}
	}
	return events, nil
}

func checkEvent(ev fakeEvent) error {
	switch {
	case ev.SpecVersion != "1.0":
		return fmt.Errorf("specversion %q", ev.SpecVersion)
	case ev.ID == "":
		return fmt.Errorf("no id")
	case ev.Source != "kgents-api":
		return fmt.Errorf("source %q", ev.Source)
	case ev.Type == "":
		return fmt.Errorf("no type")
	case ev.Subject == "":
		return fmt.Errorf("no subject")
	case len(ev.Data) == 0 || ev.Data[0] != '{':
		return fmt.Errorf("data is not an object: %s", ev.Data)
	}
	if _, err := time.Parse(time.RFC3339Nano, ev.Time); err != nil {
		return fmt.Errorf("time %q: %w", ev.Time, err)
	}
	return nil
}

func (f *fakeOpenMeter) accept(events []fakeEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.maxBatch = max(f.maxBatch, len(events))
	for _, ev := range events {
		if f.accepted[ev.ID] == 0 {
			f.order = append(f.order, ev.ID)
			f.firstAt[ev.ID] = time.Now()
		}
		f.accepted[ev.ID]++
		f.raw++
	}
}

func (f *fakeOpenMeter) violate(msg string) {
	f.mu.Lock()
	f.violations = append(f.violations, msg)
	f.mu.Unlock()
}

func problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail})
}

// stats is a snapshot of what the stand-in saw.
type fakeStats struct {
	unique, raw, requests, maxBatch int
	violations                      []string
}

func (f *fakeOpenMeter) stats() fakeStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeStats{unique: len(f.accepted), raw: f.raw, requests: len(f.requests), maxBatch: f.maxBatch,
		violations: append([]string(nil), f.violations...)}
}

func (f *fakeOpenMeter) requestTimes() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.requests...)
}

func (f *fakeOpenMeter) times(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.accepted[id]
}

// acceptedAfter counts the ids first accepted after t, and gives the last
// first acceptance of them all.
func (f *fakeOpenMeter) acceptedAfter(ids []string, t time.Time) (n int, last time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		at := f.firstAt[id]
		if at.After(t) {
			n++
		}
		if at.After(last) {
			last = at
		}
	}
	return n, last
}

// missing lists the ids the stand-in never accepted.
func (f *fakeOpenMeter) missing(ids []string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, id := range ids {
		if f.accepted[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}
