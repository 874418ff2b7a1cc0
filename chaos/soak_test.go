package chaos_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kgents/kgents-go/cluster"
)

// Sustained traffic with thousands of history reads and short watches
// against a nats-server process, in two phases: mixed (turns too), then
// reads and watches only. No request fails. Sampled every 500 ms, the
// server never holds a consumer beyond kgentsd's own durable ones (reads
// and watches create none); its memory stays flat while only reads and
// watches run (within readMemBound), and while turns write it grows no
// more than what they store explains (mixedMemBound). At the end the
// consumers are back to the baseline.
func TestSoakHistoryReadsAndWatches(t *testing.T) {
	t.Parallel()
	mixed, readOnly := 15*time.Second, 10*time.Second
	if long() {
		mixed, readOnly = 5*time.Minute, 2*time.Minute
	}
	nats := cluster.StartStandalone(t)
	r := startReplica(t, map[string]string{"NATS_SERVERS": nats.URL(), "KGENTS_TIERS_FILE": unlimitedTiers(t)})
	ctx, cancel := context.WithTimeout(context.Background(), mixed+readOnly+60*time.Second)
	defer cancel()

	const nSessions = 8
	ids := make([]string, nSessions)
	for i := range ids {
		var s session
		if code, err := r.do(ctx, "POST", "/v1/kgent/sessions", bob, fmt.Sprintf(`{"title":"soak %d"}`, i), &s); err != nil || code != 200 {
			t.Fatalf("create: %d %v", code, err)
		}
		ids[i] = s.ID
		if code, err := r.do(ctx, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"warm up","stream":false}`, nil); err != nil || code != 200 {
			t.Fatalf("first turn: %d %v", code, err)
		}
	}
	monitor := func() cluster.Monitor {
		mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
		defer mcancel()
		m, err := nats.Monitor(mctx)
		if err != nil {
			t.Fatalf("nats-server monitoring: %v", err)
		}
		return m
	}
	start := monitor()
	baseline := start.Consumers
	rssStart := r.rss(t)

	var failures counts
	var ok atomic.Int64
	var reads, watches, turns atomic.Int64
	began := time.Now()
	turnsEnd, stop := began.Add(mixed), began.Add(mixed+readOnly)
	var wg sync.WaitGroup
	// Sample the NATS server while the load runs, each sample marked with
	// its phase.
	type sample struct {
		cluster.Monitor
		readOnly bool
	}
	var samples []sample
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for time.Now().Before(stop) && ctx.Err() == nil {
			<-tick.C
			mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
			m, err := nats.Monitor(mctx)
			mcancel()
			if err != nil {
				failures.add("nats monitoring: " + err.Error())
				continue
			}
			samples = append(samples, sample{m, time.Now().After(turnsEnd)})
		}
	}()
	worker := func(kind string, until time.Time, fn func(rng *rand.Rand) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
			for time.Now().Before(until) && ctx.Err() == nil {
				if err := fn(rng); err != nil {
					failures.add(kind + ": " + err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	for range 3 {
		worker("history", stop, func(rng *rand.Rand) error {
			id := ids[rng.IntN(nSessions)]
			path := fmt.Sprintf("/v1/kgent/sessions/%s/messages?limit=%d&offset=%d", id, 1+rng.IntN(50), rng.IntN(10))
			if rng.IntN(4) == 0 {
				path = "/v1/kgent/sessions?limit=20"
			}
			var m messages
			code, err := r.do(ctx, "GET", path, bob, "", &m)
			if err == nil && code != http.StatusOK {
				err = fmt.Errorf("status %d", code)
			}
			reads.Add(1)
			return err
		})
	}
	for range 2 {
		worker("watch", stop, func(rng *rand.Rand) error {
			id := ids[rng.IntN(nSessions)]
			wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
			defer wcancel()
			sse, closeIt, err := r.stream(wctx, "GET", "/v1/kgent/sessions/"+id+"/events", bob, "", "Last-Event-ID", fmt.Sprint(rng.IntN(5)))
			if err != nil {
				return err
			}
			defer closeIt()
			// A short watch: read the first replayed events and leave.
			for range 1 + rng.IntN(3) {
				if _, err := sse.Next(); err != nil {
					return fmt.Errorf("watch read: %w", err)
				}
			}
			watches.Add(1)
			return nil
		})
	}
	worker("turn", turnsEnd, func(rng *rand.Rand) error {
		id := ids[rng.IntN(nSessions)]
		code, err := r.do(ctx, "POST", "/v1/kgent/sessions/"+id+"/messages", bob, `{"message":"keep going","stream":false}`, nil)
		if err == nil && code != http.StatusOK && code != http.StatusConflict && code != http.StatusTooManyRequests {
			err = fmt.Errorf("status %d", code)
		}
		turns.Add(1)
		return err
	})
	wg.Wait()
	<-sampled
	t.Logf("%v mixed + %v reads only: %d history/list reads, %d watches, %d turns, %d ok", mixed, readOnly, reads.Load(), watches.Load(), turns.Load(), ok.Load())
	rssEnd := r.rss(t)
	t.Logf("kgentsd RSS %d MiB → %d MiB", rssStart>>20, rssEnd>>20)
	if rssEnd > 2*rssStart+(64<<20) {
		t.Errorf("kgentsd memory grew %d → %d MiB under a read-heavy load", rssStart>>20, rssEnd>>20)
	}
	if f := failures.snapshot(); len(f) > 0 {
		t.Fatalf("failures under load: %v", f)
	}
	if reads.Load() < 500 {
		t.Errorf("only %d reads in %v: too few to mean anything", reads.Load(), mixed+readOnly)
	}

	var mixedS, readS []cluster.Monitor
	for _, s := range samples {
		if s.readOnly {
			readS = append(readS, s.Monitor)
		} else {
			mixedS = append(mixedS, s.Monitor)
		}
	}
	checkNATSFlat(t, start, mixedS, readS)
	// Watches that left are gone server-side, and reads made none.
	eventually(t, 10*time.Second, "consumers back to baseline", func() error {
		if n := monitor().Consumers; n > baseline {
			return fmt.Errorf("%d consumers, baseline %d", n, baseline)
		}
		return nil
	})
}

// The NATS server's memory bounds. The leak they guard against, a consumer
// per read, grew the server by ~340 MB in 65 s of reads. While turns write,
// the server's memory grows with what they store (the per-subject index of
// the one-subject-per-message transcript, the duplicate windows' ids), so
// the mixed phase may grow by at most mixedMemPerStored times the bytes
// stored plus mixedMemBound. Once only reads and watches run nothing
// should grow: the block caches they load come and go within seconds
// (swings of ±20 MiB, measured), so the level is taken as the median, and
// the second half's median may pass the first half's by readMemBound at
// most — a leak moves the median, a cache swing does not.
const (
	mixedMemPerStored = 3
	mixedMemBound     = 48 << 20
	readMemBound      = 16 << 20
)

// checkNATSFlat: throughout the soak the server held no consumer beyond the
// baseline, and its memory kept within the bounds above.
func checkNATSFlat(t *testing.T, start cluster.Monitor, mixed, readOnly []cluster.Monitor) {
	t.Helper()
	if len(mixed) < 5 || len(readOnly) < 5 {
		t.Fatalf("only %d + %d samples of the NATS server during the soak", len(mixed), len(readOnly))
	}
	t.Logf("kgentsd's own consumers: %v", start.ConsumerNames)
	mib := func(ms []cluster.Monitor) (series []int64, peak int64) {
		for _, m := range ms {
			series = append(series, m.Mem>>20)
			peak = max(peak, m.Mem)
		}
		return series, peak
	}
	for _, m := range append(append([]cluster.Monitor(nil), mixed...), readOnly...) {
		if m.Consumers > start.Consumers {
			t.Errorf("the NATS server held %d consumers during the soak, kgentsd's own are %d (a read or watch made one): %v", m.Consumers, start.Consumers, m.ConsumerNames)
			break
		}
	}
	mixedSeries, mixedPeak := mib(mixed)
	readSeries, readPeak := mib(readOnly)
	lastMixed := mixed[len(mixed)-1]
	stored := int64(lastMixed.JSStore) - int64(start.JSStore)
	t.Logf("NATS server memory (MiB, every 500 ms) while turns ran: %v", mixedSeries)
	t.Logf("NATS server memory (MiB, every 500 ms) while only reads and watches ran: %v", readSeries)
	t.Logf("NATS server: memory %d MiB at the start, peak %d MiB with turns (file store +%d MiB), peak %d MiB with reads only; consumers %d throughout",
		start.Mem>>20, mixedPeak>>20, stored>>20, readPeak>>20, start.Consumers)
	if limit := start.Mem + mixedMemPerStored*stored + mixedMemBound; mixedPeak > limit {
		t.Errorf("the NATS server's memory rose %d → %d MiB while turns stored %d MiB (bound %d MiB)", start.Mem>>20, mixedPeak>>20, stored>>20, limit>>20)
	}
	half := len(readOnly) / 2
	first, second := medianMem(readOnly[:half]), medianMem(readOnly[half:])
	t.Logf("NATS server memory with reads only: median %d MiB in the first half, %d MiB in the second", first>>20, second>>20)
	if second > first+readMemBound {
		t.Errorf("the NATS server's memory kept rising under reads and watches alone: median %d MiB in the phase's first half, %d MiB in its second (bound +%d MiB)", first>>20, second>>20, readMemBound>>20)
	}
}

// unlimitedTiers writes a tiers file lifting the PRO limits, so a load test
// measures the service, not its quotas.
func unlimitedTiers(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tiers.json")
	if err := os.WriteFile(p, []byte(`{"pro":{"requests_per_minute":0,"requests_per_day":0,"tokens_per_month":0}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func medianMem(ms []cluster.Monitor) int64 {
	v := make([]int64, len(ms))
	for i, m := range ms {
		v[i] = m.Mem
	}
	slices.Sort(v)
	return v[len(v)/2]
}
