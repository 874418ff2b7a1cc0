package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
)

// OpenMeterKey is the bearer token the stand-in accepts.
const OpenMeterKey = "om-test"

// OpenMeter is an HTTP stand-in for OpenMeter's ingest endpoint: it keeps
// every event it accepts by CloudEvent id and counts redeliveries.
type OpenMeter struct {
	URL string

	mu      sync.Mutex
	events  map[string]BilledEvent
	posts   int
	dups    int
	refuse  bool
	refused int
}

// BilledEvent is what the stand-in keeps of one event.
type BilledEvent struct {
	ID, Type, Subject string
	Data              map[string]any
}

// StartOpenMeter serves the stand-in on loopback until the test ends.
func StartOpenMeter(t testing.TB) *OpenMeter {
	t.Helper()
	om := &OpenMeter{events: map[string]BilledEvent{}}
	srv := httptest.NewServer(om)
	t.Cleanup(srv.Close)
	om.URL = srv.URL
	return om
}

// Env is kgentsd's configuration for delivering to the stand-in.
func (o *OpenMeter) Env() map[string]string {
	return map[string]string{
		"OPENMETER_ENABLED":        "true",
		"OPENMETER_BASE_URL":       o.URL,
		"OPENMETER_API_KEY":        OpenMeterKey,
		"OPENMETER_FLUSH_INTERVAL": "100ms",
	}
}

func (o *OpenMeter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/events" || r.Header.Get("Authorization") != "Bearer "+OpenMeterKey {
		http.Error(w, "bad request target or key", http.StatusUnauthorized)
		return
	}
	o.mu.Lock()
	if o.refuse {
		o.refused++
		o.mu.Unlock()
		http.Error(w, "unavailable (the stand-in refuses)", http.StatusServiceUnavailable)
		return
	}
	o.mu.Unlock()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var batch []struct {
		ID      string         `json:"id"`
		Type    string         `json:"type"`
		Subject string         `json:"subject"`
		Data    map[string]any `json:"data"`
	}
	if err := json.Unmarshal(b, &batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	o.posts++
	for _, e := range batch {
		if _, ok := o.events[e.ID]; ok {
			o.dups++ // a redelivery: OpenMeter's dedupe drops it
			continue
		}
		o.events[e.ID] = BilledEvent{ID: e.ID, Type: e.Type, Subject: e.Subject, Data: e.Data}
	}
	o.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// Refuse makes the stand-in answer 503 to every batch (an outage) until
// Refuse(false): usage stays pending on the sink's consumer meanwhile.
func (o *OpenMeter) Refuse(on bool) {
	o.mu.Lock()
	o.refuse = on
	o.mu.Unlock()
}

// Refused is how many batches were refused.
func (o *OpenMeter) Refused() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refused
}

// Redeliveries is how many events arrived again after being accepted.
func (o *OpenMeter) Redeliveries() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.dups
}

// Len is the number of distinct events accepted.
func (o *OpenMeter) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.events)
}

// Events is every distinct event accepted.
func (o *OpenMeter) Events() []BilledEvent {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]BilledEvent, 0, len(o.events))
	for _, e := range o.events {
		out = append(out, e)
	}
	return out
}

// Tally counts by key. Calls counts what a client saw; billed what
// OpenMeter received; both use the same keys.
type Tally map[string]int

// Diff lists the keys where want and got differ, sorted.
func Diff(want, got Tally) []string {
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	var out []string
	for k := range keys {
		if want[k] != got[k] {
			out = append(out, fmt.Sprintf("%s: served %d, billed %d", k, want[k], got[k]))
		}
	}
	sort.Strings(out)
	return out
}

// Requests tallies the api.request events by tenant, endpoint and status
// code: "tenant endpoint status".
func (o *OpenMeter) Requests() Tally {
	t := Tally{}
	for _, e := range o.Events() {
		if e.Type != "api.request" {
			continue
		}
		t[fmt.Sprintf("%s %v %v", e.Subject, e.Data["endpoint"], e.Data["status_code"])]++
	}
	return t
}

// ByType tallies events by tenant and type: "tenant type".
func (o *OpenMeter) ByType() Tally {
	t := Tally{}
	for _, e := range o.Events() {
		t[e.Subject+" "+e.Type]++
	}
	return t
}
