package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kgents/kgents-go/server/servertest"
)

var (
	kgOnce sync.Once
	kgBin  string
	kgErr  error
)

// KgentsdBinary builds ./cmd/kgentsd once per test process into a
// temporary directory (KGENTS_BINARY names another build).
func KgentsdBinary(t testing.TB) string {
	t.Helper()
	kgOnce.Do(func() {
		if bin := os.Getenv("KGENTS_BINARY"); bin != "" {
			kgBin = bin
			return
		}
		root, err := RepoRoot()
		if err != nil {
			kgErr = err
			return
		}
		dir, err := os.MkdirTemp("", "kgents-cluster-")
		if err != nil {
			kgErr = err
			return
		}
		kgBin = filepath.Join(dir, "kgentsd")
		build := exec.Command("go", "build", "-o", kgBin, "./cmd/kgentsd")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			kgErr = fmt.Errorf("go build ./cmd/kgentsd: %w\n%s", err, out)
		}
	})
	if kgErr != nil {
		t.Fatalf("cluster: kgentsd: %v", kgErr)
	}
	return kgBin
}

// Replica is one kgentsd process.
type Replica struct {
	t    testing.TB
	Name string
	env  map[string]string
	URL  string // REST + SSE, http://127.0.0.1:port

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan error
	logs *servertest.SyncBuffer
}

var restRE = regexp.MustCompile(`REST \+ SSE\s+(http://\S+)`)

// StartKgentsd runs kgentsd with env on top of test defaults (loopback,
// port 0, dev keys, a data directory of its own) and waits for its banner.
// It is killed when the test ends if still running.
func StartKgentsd(t testing.TB, name string, env map[string]string) *Replica {
	t.Helper()
	vars := map[string]string{
		"LISTEN_HOST":      "127.0.0.1",
		"HTTP_PORT":        "0",
		"GRPC_PORT":        "0",
		"KGENTS_DEV_KEYS":  "true",
		"KGENTS_DATA_DIR":  t.TempDir(),
		"SHUTDOWN_DRAIN":   "0",
		"SHUTDOWN_TIMEOUT": "10s",
		"LOG_LEVEL":        "warn",
		// Logs, turn markers and in-flight usage records name the
		// replica, not the host all of them share.
		"KGENTS_REPLICA_NAME": name,
	}
	for k, v := range env {
		vars[k] = v
	}
	r := &Replica{t: t, Name: name, env: vars, logs: &servertest.SyncBuffer{}}
	t.Cleanup(func() {
		r.Kill()
		if t.Failed() {
			t.Logf("kgentsd %s logs:\n%s", name, tail(r.logs.String(), 20000))
		}
	})
	r.Start()
	return r
}

// Start starts the replica (again, after Kill or Term: same data directory,
// a new HTTP port) and waits for its banner.
func (r *Replica) Start() {
	r.t.Helper()
	cmd := exec.Command(KgentsdBinary(r.t))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range r.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		r.t.Fatal(err)
	}
	cmd.Stderr = r.logs
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := restRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case urls <- m[1]:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()
	select {
	case u := <-urls:
		r.mu.Lock()
		r.URL = u
		r.mu.Unlock()
	case err := <-done:
		done <- err
		r.t.Fatalf("kgentsd %s exited before ready: %v\n%s", r.Name, err, tail(r.logs.String(), 8000))
	case <-time.After(60 * time.Second):
		r.t.Fatalf("kgentsd %s not ready after 60s\n%s", r.Name, tail(r.logs.String(), 8000))
	}
}

// Base is the replica's current REST URL.
func (r *Replica) Base() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.URL
}

// Logs is what the replica logged (all its runs).
func (r *Replica) Logs() string { return r.logs.String() }

// Pid is the running process's id (0 when stopped).
func (r *Replica) Pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Kill is kill -9 (a no-op when stopped).
func (r *Replica) Kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd, r.done = nil, nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	_ = drain(done)
}

// Term sends SIGTERM and waits up to within for the exit, returning how long
// it took and the exit error (nil: exit 0).
func (r *Replica) Term(within time.Duration) (time.Duration, error) {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd, r.done = nil, nil
	r.mu.Unlock()
	if cmd == nil {
		return 0, nil
	}
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		return time.Since(start), err
	case <-time.After(within):
		_ = cmd.Process.Kill()
		_ = drain(done)
		return time.Since(start), fmt.Errorf("kgentsd %s still running %v after SIGTERM", r.Name, within)
	}
}

// Client is an HTTP client without connection reuse limits for load.
var Client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 0}}

// Do sends a REST request as key and decodes a 200's JSON into out (if
// set). headers are name, value pairs.
func (r *Replica) Do(ctx context.Context, method, path, key, body string, out any, headers ...string) (int, []byte, error) {
	code, b, _, err := r.DoHeader(ctx, method, path, key, body, out, headers...)
	return code, b, err
}

// DoHeader is Do, also returning the response's headers.
func (r *Replica) DoHeader(ctx context.Context, method, path, key, body string, out any, headers ...string) (int, []byte, http.Header, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.Base()+path, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("X-API-Key", key)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := Client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, b, resp.Header, err
	}
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, b, resp.Header, fmt.Errorf("%s %s: %w: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, b, resp.Header, nil
}

// Stream opens an SSE request; the caller closes the returned func.
func (r *Replica) Stream(ctx context.Context, method, path, key, body string, headers ...string) (*servertest.SSEReader, func(), error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.Base()+path, rd)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("X-API-Key", key)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := Client.Do(req) //nolint:bodyclose // closed by the closer returned with the stream
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return nil, nil, &StatusError{Code: resp.StatusCode, Msg: fmt.Sprintf("%s %s: %d %s", method, path, resp.StatusCode, b)}
	}
	return servertest.NewSSEReader(resp.Body), func() { _ = resp.Body.Close() }, nil
}

// StatusError is a stream the server refused with an HTTP status: it was
// answered (and metered), unlike a transport error.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

// Cluster is a NATS cluster and kgentsd replicas connected to every node.
type Cluster struct {
	NATS     *NATS
	Replicas []*Replica
}

// Start starts nodes NATS nodes and replicas kgentsd replicas with
// NATS_SERVERS listing every node and NATS_REPLICAS=min(nodes, 3), plus env.
func Start(t testing.TB, nodes, replicas int, env map[string]string) *Cluster {
	t.Helper()
	return StartOn(t, StartNATS(t, nodes), replicas, env)
}

// StartOn starts replicas kgentsd replicas on a running NATS cluster, as
// Start does.
func StartOn(t testing.TB, n *NATS, replicas int, env map[string]string) *Cluster {
	t.Helper()
	c := &Cluster{NATS: n}
	vars := map[string]string{
		"NATS_SERVERS":  c.NATS.URLs(),
		"NATS_REPLICAS": fmt.Sprint(min(len(n.Nodes), 3)),
	}
	for k, v := range env {
		vars[k] = v
	}
	for i := range replicas {
		c.Replicas = append(c.Replicas, StartKgentsd(t, fmt.Sprintf("k%d", i+1), vars))
	}
	return c
}

// PollCtx is Poll bounded by ctx too.
func PollCtx(ctx context.Context, within time.Duration, fn func() error) error {
	if d, ok := ctx.Deadline(); ok && time.Until(d) < within {
		within = time.Until(d)
	}
	return Poll(within, fn)
}

// drain waits for a process's exit result, which a forced stop ignores.
func drain(done <-chan error) error { return <-done }

// SpoolDepth reads the replica's kgents_nats_fallback_queue_depth (the
// messages in its spool not yet acknowledged by JetStream).
func (r *Replica) SpoolDepth(ctx context.Context) (float64, error) {
	return r.Metric(ctx, "kgents_nats_fallback_queue_depth")
}

// Metric reads an unlabelled metric from the replica's /metrics.
func (r *Replica) Metric(ctx context.Context, name string) (float64, error) {
	code, body, err := r.Do(ctx, "GET", "/metrics", "", "", nil)
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("%s /metrics: %d", r.Name, code)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s /metrics has no %s", r.Name, name)
}

// SpoolsDrained is nil once every running replica's spool is empty.
func (c *Cluster) SpoolsDrained(ctx context.Context) error {
	for _, r := range c.Replicas {
		if r.Pid() == 0 {
			continue // not running
		}
		n, err := r.SpoolDepth(ctx)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%s holds %v spooled messages", r.Name, n)
		}
	}
	return nil
}
