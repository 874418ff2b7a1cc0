package cluster_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kgents/kgents-go/cluster"
)

// TestCapacity measures what 1 and 3 kgentsd replicas on a 3-node R3 NATS
// cluster sustain on this machine: REST dialogue calls/s (each meters two
// usage events) and watch fan-out deliveries/s, with the CPU each tier
// spent per call and per delivery (from /proc). The load generator runs in
// this process and shares the cores; its CPU is reported too. It is a
// measurement, not a check: `make capacity` runs it (KGENTS_CLUSTER_CAPACITY=1)
// and docs/operations.md's capacity guide quotes it.
func TestCapacity(t *testing.T) {
	if os.Getenv("KGENTS_CLUSTER_CAPACITY") == "" {
		t.Skip("a measurement of several minutes: make capacity")
	}
	window := 15 * time.Second
	if v := os.Getenv("KGENTS_CAPACITY_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		window = time.Duration(n) * time.Second
	}
	nodes := cluster.StartNATS(t, 3)
	for _, replicas := range []int{1, 3} {
		env := map[string]string{
			"KGENTS_TIERS_FILE":          unlimitedTiers(t),
			"KGENTS_WATCHERS_PER_TENANT": "1000",
			"LOG_LEVEL":                  "warn",
		}
		c := cluster.StartOn(t, nodes, replicas, env)
		rest := measure(t, c, window, func(ctx context.Context, count *atomic.Int64) { restLoad(ctx, c, 32, count) })
		t.Logf("%d replica(s), REST dialogue (32 connections): %s per call", replicas, rest)
		watch := measure(t, c, window, func(ctx context.Context, count *atomic.Int64) { watchLoad(ctx, t, c, 4, 50, count) })
		t.Logf("%d replica(s), watch fan-out (4 sessions streaming turns, 50 watchers each per replica): %s per delivery", replicas, watch)
		for _, r := range c.Replicas {
			if _, err := r.Term(30 * time.Second); err != nil {
				t.Errorf("%s: %v", r.Name, err)
			}
		}
	}
}

// usage is one measurement: operations/s and the CPU each tier spent.
type usage struct {
	ops                  float64 // per second
	kgentsd, nats, loadg time.Duration
	n                    int64
	window               time.Duration
}

func (u usage) String() string {
	per := func(d time.Duration) string {
		if u.n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f µs", float64(d.Microseconds())/float64(u.n))
	}
	cores := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()/u.window.Seconds()) }
	return fmt.Sprintf("%.0f/s; CPU kgentsd %s (%s cores), NATS %s (%s cores), load generator %s cores;",
		u.ops, per(u.kgentsd), cores(u.kgentsd), per(u.nats), cores(u.nats), cores(u.loadg))
}

// measure runs load, warms up for 3 s, then counts operations and CPU over
// window.
func measure(t *testing.T, c *cluster.Cluster, window time.Duration, load func(context.Context, *atomic.Int64)) usage {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var count atomic.Int64
	done := make(chan struct{})
	go func() { defer close(done); load(ctx, &count) }()
	time.Sleep(3 * time.Second) // warm-up: connections, caches, JIT-free but GC-sized heaps
	k0, n0, g0 := cpuOf(t, kgentsdPids(c)), cpuOf(t, natsPids(c)), cpuOf(t, []int{os.Getpid()})
	c0, start := count.Load(), time.Now()
	time.Sleep(window)
	c1, el := count.Load(), time.Since(start)
	k1, n1, g1 := cpuOf(t, kgentsdPids(c)), cpuOf(t, natsPids(c)), cpuOf(t, []int{os.Getpid()})
	cancel()
	<-done
	n := c1 - c0
	return usage{ops: float64(n) / el.Seconds(), kgentsd: k1 - k0, nats: n1 - n0, loadg: g1 - g0, n: n, window: el}
}

func kgentsdPids(c *cluster.Cluster) []int {
	var out []int
	for _, r := range c.Replicas {
		out = append(out, r.Pid())
	}
	return out
}

func natsPids(c *cluster.Cluster) []int {
	var out []int
	for _, nd := range c.NATS.Nodes {
		out = append(out, nd.Pid())
	}
	return out
}

// cpuOf sums the user and system CPU time of processes (from /proc, in
// clock ticks of 1/100 s).
func cpuOf(t *testing.T, pids []int) time.Duration {
	t.Helper()
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		// Fields from the state (3rd): utime is the 14th, stime the 15th.
		ut, err1 := strconv.ParseInt(f[11], 10, 64)
		st, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("/proc/%d/stat: %q", pid, b)
		}
		total += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return total
}

// restLoad runs conns closed-loop callers of POST /v1/soul/dialogue,
// spread over the replicas, counting 200s.
func restLoad(ctx context.Context, c *cluster.Cluster, conns int, count *atomic.Int64) {
	const body = `{"prompt":"What should I focus on this week?","mode":"advise"}`
	var wg sync.WaitGroup
	for i := range conns {
		r := c.Replicas[i%len(c.Replicas)]
		wg.Go(func() {
			for ctx.Err() == nil {
				if code, _, err := r.Do(ctx, "POST", cluster.RouteDialogue, cluster.Carol, body, nil); err == nil && code == http.StatusOK {
					count.Add(1)
				}
			}
		})
	}
	wg.Wait()
}

// watchLoad streams turns on sessions, one writer each, with watchers per
// session on every replica, counting the events the watchers receive.
func watchLoad(ctx context.Context, t *testing.T, c *cluster.Cluster, sessions, watchersPerReplica int, count *atomic.Int64) {
	var wg sync.WaitGroup
	for s := range sessions {
		var created struct {
			ID string `json:"id"`
		}
		writer := c.Replicas[s%len(c.Replicas)]
		if code, b, err := writer.Do(ctx, "POST", "/v1/kgent/sessions", cluster.Carol, `{}`, &created); err != nil || code != http.StatusOK {
			t.Errorf("create session: %d %s %v", code, b, err)
			return
		}
		id := created.ID
		for _, r := range c.Replicas {
			for range watchersPerReplica {
				wg.Go(func() {
					for ctx.Err() == nil {
						sse, closeIt, err := r.Stream(ctx, "GET", "/v1/kgent/sessions/"+id+"/events", cluster.Carol, "")
						if err != nil {
							continue
						}
						for {
							ev, err := sse.Next()
							if err != nil {
								break
							}
							if ev.ID != "" {
								count.Add(1)
							}
						}
						closeIt()
					}
				})
			}
		}
		wg.Go(func() {
			for ctx.Err() == nil {
				sse, closeIt, err := writer.Stream(ctx, "POST", "/v1/kgent/sessions/"+id+"/messages", cluster.Carol, `{"message":"Tell me how to pace a long project","mode":"advise"}`)
				if err != nil {
					continue
				}
				for {
					if _, err := sse.Next(); err != nil {
						break
					}
				}
				closeIt()
			}
		})
	}
	wg.Wait()
}
