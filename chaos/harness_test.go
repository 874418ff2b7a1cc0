package chaos_test

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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kgents/kgents-go/server/servertest"
)

// kgentsd is the binary under test, built once by TestMain from
// ./cmd/kgentsd: the faults here happen to real processes (kill -9 is not a
// cancelled context).
var kgentsd string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kgents-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kgentsd = filepath.Join(dir, "kgentsd")
	if bin := os.Getenv("KGENTS_CHAOS_BINARY"); bin != "" {
		kgentsd = bin // another build, e.g. an older commit to compare with
	} else {
		build := exec.Command("go", "build", "-o", kgentsd, "../cmd/kgentsd")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building kgentsd:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// long reports whether the long versions run (make chaos).
func long() bool { return os.Getenv("KGENTS_CHAOS_LONG") != "" }

// replica is one kgentsd process.
type replica struct {
	t    *testing.T
	cmd  *exec.Cmd
	URL  string
	logs *servertest.SyncBuffer
	done chan error
}

var restRE = regexp.MustCompile(`REST \+ SSE\s+(http://\S+)`)

// startReplica runs kgentsd with env (on top of test defaults) and waits for
// its banner. It is killed when the test ends if still running.
func startReplica(t *testing.T, env map[string]string) *replica {
	t.Helper()
	vars := map[string]string{
		"LISTEN_HOST":      "127.0.0.1",
		"HTTP_PORT":        "0",
		"GRPC_PORT":        "0",
		"KGENTS_DEV_KEYS":  "true",
		"KGENTS_DATA_DIR":  t.TempDir(),
		"SHUTDOWN_DRAIN":   "0",
		"SHUTDOWN_TIMEOUT": "10s",
		"LOG_LEVEL":        "info",
	}
	for k, v := range env {
		vars[k] = v
	}
	cmd := exec.Command(kgentsd)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{t: t, cmd: cmd, logs: &servertest.SyncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = r.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
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
	go func() { r.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		exit := <-r.waitCh()
		if t.Failed() {
			t.Logf("kgentsd (pid %d, %v) logs:\n%s", cmd.Process.Pid, exit, r.logs.String())
		}
	})
	select {
	case u := <-urls:
		r.URL = u
	case err := <-r.done:
		r.done <- err
		t.Fatalf("kgentsd exited before ready: %v\n%s", err, r.logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("kgentsd not ready after 60s\n%s", r.logs.String())
	}
	return r
}

func (r *replica) waitCh() <-chan error {
	ch := make(chan error, 1)
	go func() {
		err := <-r.done
		r.done <- err
		ch <- err
	}()
	return ch
}

// rss is the process's resident memory in bytes.
func (r *replica) rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb); err == nil {
				return kb << 10
			}
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", r.cmd.Process.Pid)
	return 0
}

// kill is kill -9.
func (r *replica) kill() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		r.t.Fatal(err)
	}
	r.t.Logf("kgentsd pid %d killed: %v", r.cmd.Process.Pid, <-r.waitCh())
}

// term sends SIGTERM and returns how long the process took to exit and its error.
func (r *replica) term(within time.Duration) (time.Duration, error) {
	r.t.Helper()
	start := time.Now()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		r.t.Fatal(err)
	}
	select {
	case err := <-r.waitCh():
		return time.Since(start), err
	case <-time.After(within):
		return time.Since(start), fmt.Errorf("still running %v after SIGTERM", within)
	}
}

// do sends a REST request as key and decodes a JSON answer into out (if set).
func (r *replica) do(ctx context.Context, method, path, key, body string, out any) (int, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.URL+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-API-Key", key)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, nil
}

// stream opens an SSE request and returns a reader and a closer.
func (r *replica) stream(ctx context.Context, method, path, key, body string, headers ...string) (*servertest.SSEReader, func(), error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.URL+path, rd)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("X-API-Key", key)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return nil, nil, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return servertest.NewSSEReader(resp.Body), func() { _ = resp.Body.Close() }, nil
}

type session struct {
	ID           string `json:"id"`
	MessageCount int    `json:"message_count"`
	TokensUsed   int    `json:"tokens_used"`
}

type message struct {
	ID         string `json:"id"`
	Role       string `json:"role"`
	Content    string `json:"content"`
	TokensUsed int    `json:"tokens_used"`
}

type messages struct {
	Messages []message `json:"messages"`
	Total    int       `json:"total"`
}

// eventually retries fn (a real request each time) until it succeeds or
// the deadline passes; it returns how long it took.
func eventually(t *testing.T, within time.Duration, what string, fn func() error) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		if err = fn(); err == nil {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		<-tick.C
	}
}

// syncMap is a tiny typed concurrent counter set for load tests.
type counts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counts) add(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[k]++
}

func (c *counts) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}
