package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kgents/kgents-go/config"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// asKgentsd makes the test binary run main() instead of the tests, so tests
// can start kgentsd as a real process (re-exec) without building it.
const asKgentsd = "KGENTSD_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asKgentsd) == "1" {
		// Serve, as kgentsd without arguments does: the test flags the
		// re-exec carries are not kgentsd's.
		os.Args = os.Args[:1]
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// bannerWriter collects what run prints and signals the start banner.
type bannerWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func (w *bannerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), "kgentsd is ready") {
		w.once.Do(func() { close(w.ready) })
	}
	return len(p), nil
}

func (w *bannerWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func freePort(t *testing.T) int { return natstest.FreePort(t) }

// startRun runs kgentsd in process with env and returns its banner; the
// server is stopped when the test ends.
func startRun(t *testing.T, env map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &bannerWriter{ready: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- run(ctx, config.MapLookup(env), out, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	select {
	case <-out.ready:
	case err := <-done:
		done <- err
		t.Fatalf("kgentsd stopped before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("kgentsd not ready after 30 s")
	}
	// The banner is one Fprint: once "ready" is in, all of it is.
	return out.String()
}

// TestDevKeysListenOnLoopback: with the public dev keys on (make run), the
// HTTP, gRPC and metrics servers bind loopback unless LISTEN_HOST says
// otherwise, and the banner says how to expose them; without dev keys the
// default stays every interface.
func TestDevKeysListenOnLoopback(t *testing.T) {
	addrRE := regexp.MustCompile(`(?m)^  (REST \+ SSE|gRPC|metrics) +(?:https?://)?([^ /\n]+)`)
	listening := func(banner string) map[string]string {
		got := map[string]string{}
		for _, m := range addrRE.FindAllStringSubmatch(banner, -1) {
			host, _, err := net.SplitHostPort(m[2])
			if err != nil {
				t.Fatalf("banner address %q: %v", m[2], err)
			}
			got[m[1]] = host
		}
		if len(got) != 3 {
			t.Fatalf("banner lists %d addresses, want 3:\n%s", len(got), banner)
		}
		return got
	}
	base := func(devKeys string) map[string]string {
		return map[string]string{
			"KGENTS_DEV_KEYS": devKeys, "NATS_ENABLED": "false", "KGENTS_DATA_DIR": t.TempDir(),
			"HTTP_PORT": "0", "GRPC_PORT": "0", "METRICS_PORT": strconv.Itoa(freePort(t)),
			"SHUTDOWN_DRAIN": "0", "LOG_LEVEL": "error",
		}
	}

	t.Run("dev keys on", func(t *testing.T) {
		banner := startRun(t, base("true"))
		for what, host := range listening(banner) {
			if host != "127.0.0.1" {
				t.Errorf("%s listens on %s with the dev keys on, want 127.0.0.1", what, host)
			}
		}
		if !strings.Contains(banner, "LISTEN_HOST=0.0.0.0") {
			t.Errorf("the banner does not say how to expose kgentsd:\n%s", banner)
		}
	})
	t.Run("dev keys on, LISTEN_HOST=0.0.0.0", func(t *testing.T) {
		env := base("true")
		env["LISTEN_HOST"] = "0.0.0.0"
		banner := startRun(t, env)
		for what, host := range listening(banner) {
			if host != "localhost" { // hostPort's spelling of the wildcard
				t.Errorf("%s listens on %s, want every interface", what, host)
			}
		}
		if !strings.Contains(banner, "WARNING: the public dev keys are on") {
			t.Errorf("the banner does not warn that the dev keys are exposed:\n%s", banner)
		}
	})
	t.Run("dev keys off", func(t *testing.T) {
		banner := startRun(t, base("false"))
		for what, host := range listening(banner) {
			if host != "localhost" {
				t.Errorf("%s listens on %s without dev keys, want every interface", what, host)
			}
		}
	})
}

// kgentsdProcess is kgentsd run as a child process (this test binary).
type kgentsdProcess struct {
	cmd    *exec.Cmd
	stdout *bannerWriter
	stderr *bannerWriter
	done   chan error
}

func startProcess(t *testing.T, env map[string]string) *kgentsdProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), asKgentsd+"=1")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &kgentsdProcess{
		cmd:    cmd,
		stdout: &bannerWriter{ready: make(chan struct{})},
		stderr: &bannerWriter{ready: make(chan struct{})},
		done:   make(chan error, 1),
	}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case err := <-p.done:
			p.done <- err
		default:
			_ = cmd.Process.Kill()
			t.Logf("kgentsd (pid %d) killed at the end of the test: %v", cmd.Process.Pid, <-p.done)
		}
	})
	return p
}

// wait returns the process's exit error, killing it after timeout.
func (p *kgentsdProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		t.Fatalf("kgentsd did not exit within %s; stderr:\n%s", timeout, p.stderr)
		return err
	}
}

// TestSecondKgentsdOnTheDataDirRefusesBeforeNATS starts two real kgentsd
// processes on one KGENTS_DATA_DIR (different ports): the second must exit
// non-zero with a clear message and never start its embedded NATS server on
// the first one's JetStream store.
func TestSecondKgentsdOnTheDataDirRefusesBeforeNATS(t *testing.T) {
	dir := t.TempDir()
	env := func() map[string]string {
		return map[string]string{
			"KGENTS_DATA_DIR": dir, "NATS_EMBEDDED_PORT": strconv.Itoa(freePort(t)),
			"HTTP_PORT": "0", "GRPC_PORT": "0", "SHUTDOWN_DRAIN": "0", "LOG_LEVEL": "debug",
		}
	}
	first := startProcess(t, env())
	select {
	case <-first.stdout.ready:
	case err := <-first.done:
		first.done <- err // for the cleanup, which waits for the exit
		t.Fatalf("the first kgentsd exited: %v\n%s", err, first.stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("the first kgentsd is not ready after 60 s:\n%s", first.stderr)
	}

	secondEnv := env()
	second := startProcess(t, secondEnv)
	err := second.wait(t, 60*time.Second)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("the second kgentsd on the same data directory exited with %v, want a non-zero exit", err)
	}
	stderr := second.stderr.String()
	if !strings.Contains(stderr, "KGENTS_DATA_DIR "+dir+" is in use by another process (pid "+strconv.Itoa(first.cmd.Process.Pid)+")") {
		t.Errorf("the second kgentsd's message does not say the data directory is taken and by whom:\n%s", stderr)
	}
	// At LOG_LEVEL=debug an embedded server's start is logged (its notices
	// and "embedded NATS started"); none may appear.
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		if line := sc.Text(); strings.Contains(line, "nats-server") || strings.Contains(line, "embedded NATS started") {
			t.Errorf("the second kgentsd started an embedded NATS server: %s", line)
		}
	}
	if strings.Contains(second.stdout.String(), "kgentsd is ready") {
		t.Error("the second kgentsd became ready")
	}

	// The first one is untouched and stops cleanly.
	if err := first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := first.wait(t, 60*time.Second); err != nil {
		t.Errorf("the first kgentsd: %v\n%s", err, first.stderr)
	}
}

// TestMemoryLimitFromTheContainer starts real kgentsd processes the way the
// manifests do (KGENTS_MEMORY_LIMIT from limits.memory) and reads the Go
// runtime's soft limit back from /metrics: 90 % of the container's limit,
// unless GOMEMLIMIT is set, which wins; with neither there is no limit.
func TestMemoryLimitFromTheContainer(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"90% of the container limit", map[string]string{"KGENTS_MEMORY_LIMIT": "536870912", "GOMEMLIMIT": ""}, "4.8318382e+08"},
		{"GOMEMLIMIT wins", map[string]string{"KGENTS_MEMORY_LIMIT": "536870912", "GOMEMLIMIT": "300MiB"}, "3.145728e+08"},
		{"no limit", map[string]string{"GOMEMLIMIT": ""}, "9.223372036854776e+18"},
	}
	metricsURL := regexp.MustCompile(`metrics +(http://\S+/metrics)`)
	limitLine := regexp.MustCompile(`(?m)^go_gc_gomemlimit_bytes (\S+)$`)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{
				"KGENTS_DATA_DIR": t.TempDir(), "NATS_ENABLED": "false",
				"HTTP_PORT": "0", "GRPC_PORT": "0", "SHUTDOWN_DRAIN": "0",
			}
			maps.Copy(env, tc.env)
			p := startProcess(t, env)
			select {
			case <-p.stdout.ready:
			case err := <-p.done:
				t.Fatalf("kgentsd exited: %v\n%s", err, p.stderr)
			case <-time.After(60 * time.Second):
				t.Fatalf("kgentsd is not ready after 60 s:\n%s", p.stderr)
			}
			m := metricsURL.FindStringSubmatch(p.stdout.String())
			if m == nil {
				t.Fatalf("no metrics URL in the banner:\n%s", p.stdout)
			}
			resp, err := http.Get(m[1])
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			got := limitLine.FindSubmatch(body)
			if got == nil {
				t.Fatalf("/metrics has no go_gc_gomemlimit_bytes")
			}
			if string(got[1]) != tc.want {
				t.Errorf("go_gc_gomemlimit_bytes = %s, want %s", got[1], tc.want)
			}
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := p.wait(t, 60*time.Second); err != nil {
				t.Errorf("kgentsd: %v\n%s", err, p.stderr)
			}
		})
	}
}
