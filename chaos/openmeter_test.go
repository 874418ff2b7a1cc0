package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kgents/kgents-go/streaming/natstest"
)

// openMeter is an HTTP stand-in for OpenMeter's ingest endpoint that can be
// taken down (503) and counts every event it accepts, by id.
type openMeter struct {
	down atomic.Bool
	mu   sync.Mutex
	seen map[string]string // id → type
	dups int
}

func (o *openMeter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/events" || r.Header.Get("Authorization") != "Bearer om-test" {
		http.Error(w, "bad request target or key", http.StatusUnauthorized)
		return
	}
	if o.down.Load() {
		http.Error(w, "down for the test", http.StatusServiceUnavailable)
		return
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var batch []struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	if err := json.Unmarshal(b, &batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = map[string]string{}
	}
	for _, e := range batch {
		if _, ok := o.seen[e.ID]; ok {
			o.dups++ // a redelivery; OpenMeter's dedupe drops it
		}
		o.seen[e.ID] = e.Type
	}
	w.WriteHeader(http.StatusNoContent)
}

func (o *openMeter) count(typ string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, t := range o.seen {
		if t == typ {
			n++
		}
	}
	return n
}

// OpenMeter down while calls are served: no call waits on it, and once it
// is back every call's usage reaches it, each event id once.
func TestOpenMeterOutage(t *testing.T) {
	t.Parallel()
	om := &openMeter{}
	om.down.Store(true)
	srv := httptest.NewServer(om)
	defer srv.Close()
	nats := natstest.Start(t)
	r := startReplica(t, map[string]string{
		"NATS_SERVERS":             nats.URL(),
		"OPENMETER_ENABLED":        "true",
		"OPENMETER_BASE_URL":       srv.URL,
		"OPENMETER_API_KEY":        "om-test",
		"OPENMETER_FLUSH_INTERVAL": "100ms",
		"KGENTS_TIERS_FILE":        unlimitedTiers(t),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	calls := 200
	if long() {
		calls = 2000
	}
	start := time.Now()
	for i := range calls {
		code, err := r.do(ctx, "POST", "/v1/soul/dialogue", bob, fmt.Sprintf(`{"prompt":"call %d"}`, i), nil)
		if err != nil || code != http.StatusOK {
			t.Fatalf("call %d with OpenMeter down: %d %v", i, code, err)
		}
	}
	t.Logf("%d calls with OpenMeter down in %v", calls, time.Since(start).Round(time.Millisecond))
	om.down.Store(false)
	recovered := time.Now()
	eventually(t, 60*time.Second, "every call's usage at OpenMeter", func() error {
		if n := om.count("api.request"); n < calls {
			return fmt.Errorf("%d of %d api.request events", n, calls)
		}
		return nil
	})
	t.Logf("all usage delivered %v after OpenMeter came back (%d redeliveries, deduplicated by id)", time.Since(recovered).Round(time.Millisecond), om.dups)
	if n := om.count("api.request"); n != calls {
		t.Fatalf("%d distinct api.request events for %d calls", n, calls)
	}
}
