// Package cluster is a local cluster harness: a JetStream cluster of real
// nats-server processes (the version go.mod pins, built by `go build` into
// bin/) on loopback, and real kgentsd processes connected to all of it, for
// tests that kill, restart and measure them. Everything a helper starts is
// stopped when its test ends. `make cluster` runs the suite's long versions.
package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// NATSModule is the module nats-server is built from; its version is the
// one go.mod requires.
const NATSModule = "github.com/nats-io/nats-server/v2"

var (
	natsOnce sync.Once
	natsBin  string
	natsErr  error
)

// RepoRoot is the main module's directory.
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the kgents-go module")
	}
	return filepath.Dir(mod), nil
}

// pinnedNATSVersion is go.mod's version of NATSModule.
func pinnedNATSVersion(root string) (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Version}}", NATSModule)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s: %w", NATSModule, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// NATSServerBinary returns bin/nats-server, building it from go.mod's
// pinned module when it is missing or another version
// (KGENTS_NATS_SERVER names another binary). The machine's own nats-server
// is never used: it may be too old (kgentsd needs ≥ 2.11).
func NATSServerBinary(t testing.TB) string {
	t.Helper()
	natsOnce.Do(func() { natsBin, natsErr = buildNATS() })
	if natsErr != nil {
		t.Fatalf("cluster: nats-server: %v", natsErr)
	}
	return natsBin
}

func buildNATS() (string, error) {
	if bin := os.Getenv("KGENTS_NATS_SERVER"); bin != "" {
		return bin, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	want, err := pinnedNATSVersion(root)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "nats-server")
	if out, err := exec.Command(bin, "--version").Output(); err == nil && strings.TrimSpace(string(out)) == "nats-server: "+want {
		return bin, nil
	}
	// Build to a temporary name and rename, so parallel test binaries never
	// run a half-written file.
	tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid())
	build := exec.Command("go", "build", "-trimpath", "-o", tmp, NATSModule)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("go build %s: %w\n%s", NATSModule, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	return bin, nil
}

// Node is one nats-server process of a NATS cluster.
type Node struct {
	t    testing.TB
	Name string
	// Port (clients), ClusterPort (routes), MonitorPort (/healthz, /jsz).
	Port, ClusterPort, MonitorPort int
	dir, conf                      string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan error
	logs *servertest.SyncBuffer
}

// NATS is a JetStream cluster of nats-server processes.
type NATS struct {
	t     testing.TB
	bin   string
	Nodes []*Node
}

// FreePort is a free loopback TCP port below the kernel's ephemeral
// range (natstest.FreePort).
func FreePort(t testing.TB) int {
	t.Helper()
	return natstest.FreePort(t)
}

// StartNATS starts an n-node JetStream cluster on loopback (each node with
// its own store, client, cluster and monitoring port) and waits until every
// node is healthy. Every node is killed when the test ends.
func StartNATS(t testing.TB, n int) *NATS {
	t.Helper()
	bin := NATSServerBinary(t)
	for attempt := 1; ; attempt++ {
		c := &NATS{t: t, bin: bin}
		c.boot(t.TempDir(), n)
		bad, err := c.waitHealthy(60 * time.Second)
		if err == nil {
			return c
		}
		if attempt < 3 && c.portTaken() {
			// Another process bound one of the ports after it was picked:
			// start over on new ones.
			t.Logf("cluster: a port was taken before node %s could bind it; starting over on new ports", bad.Name)
			for _, nd := range c.Nodes {
				nd.Kill()
			}
			continue
		}
		t.Fatalf("cluster: node %s not healthy: %v\n%s", bad.Name, err, c.logs())
	}
}

// portTaken reports whether a node failed to bind one of its ports.
func (c *NATS) portTaken() bool {
	for _, nd := range c.Nodes {
		if strings.Contains(nd.Logs(), "address already in use") {
			return true
		}
	}
	return false
}

// boot writes n nodes' configurations under base, on fresh ports, and
// starts them (killed when the test ends).
func (c *NATS) boot(base string, n int) {
	t := c.t
	t.Helper()
	for i := range n {
		c.Nodes = append(c.Nodes, &Node{
			t: t, Name: fmt.Sprintf("n%d", i+1),
			Port: FreePort(t), ClusterPort: FreePort(t), MonitorPort: FreePort(t),
			dir: filepath.Join(base, fmt.Sprintf("n%d", i+1)),
		})
	}
	var routes []string
	for _, nd := range c.Nodes {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", nd.ClusterPort))
	}
	for _, nd := range c.Nodes {
		if err := os.MkdirAll(nd.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		nd.conf = filepath.Join(nd.dir, "nats.conf")
		conf := fmt.Sprintf(`server_name: %s
host: 127.0.0.1
port: %d
http: "127.0.0.1:%d"
jetstream {
  store_dir: %q
  max_memory_store: 256MB
  max_file_store: 2GB
}
cluster {
  name: kgents
  listen: "127.0.0.1:%d"
  routes: [%s]
}
`, nd.Name, nd.Port, nd.MonitorPort, filepath.Join(nd.dir, "jetstream"), nd.ClusterPort, strings.Join(routes, ", "))
		if err := os.WriteFile(nd.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range c.Nodes {
		nd.start(c.bin)
	}
	t.Cleanup(func() {
		for _, nd := range c.Nodes {
			nd.Kill()
		}
	})
}

// URLs is every node's client URL, comma-separated (NATS_SERVERS).
func (c *NATS) URLs() string {
	var u []string
	for _, nd := range c.Nodes {
		u = append(u, nd.URL())
	}
	return strings.Join(u, ",")
}

// Node returns the node called name, or nil.
func (c *NATS) Node(name string) *Node {
	for _, nd := range c.Nodes {
		if nd.Name == name {
			return nd
		}
	}
	return nil
}

// WaitHealthy waits until every running node answers /healthz 200 (its
// JetStream meta group and every stream and consumer it holds current).
func (c *NATS) WaitHealthy(within time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	if nd, err := c.waitHealthy(within); err != nil {
		c.t.Fatalf("cluster: node %s not healthy after %v: %v\n%s", nd.Name, time.Since(start).Round(time.Millisecond), err, c.logs())
	}
	return time.Since(start)
}

// waitHealthy waits until every running node is healthy, returning the
// first that is not by the deadline.
func (c *NATS) waitHealthy(within time.Duration) (*Node, error) {
	start := time.Now()
	for _, nd := range c.Nodes {
		if !nd.Running() {
			continue
		}
		if err := nd.waitHealthy(within - time.Since(start)); err != nil {
			return nd, err
		}
	}
	return nil, nil
}

// logs is every node's log without the health-check noise: a node that
// cannot find the meta leader is often explained by its peers' logs.
func (c *NATS) logs() string {
	var logs strings.Builder
	for _, o := range c.Nodes {
		fmt.Fprintf(&logs, "--- %s (running: %v)\n%s\n", o.Name, o.Running(), tail(o.meaningfulLogs(), 6000))
	}
	return logs.String()
}

// RestartHealthy starts the stopped node nd and waits until the cluster
// is healthy. A restarted node has been seen (once, in CI under the full
// test run's load) to stay on "JetStream has not established contact
// with a meta leader" for over a minute while its peers were healthy:
// after within, it is stopped and started once more (what an operator
// does, docs/operations.md), with every node's log in the test's, before
// the test fails at the second deadline.
func (c *NATS) RestartHealthy(nd *Node, within time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	nd.Start()
	if bad, err := c.waitHealthy(within); err != nil {
		c.t.Logf("cluster: node %s not healthy %v after %s's restart (%v); restarting %s again. Logs:\n%s",
			bad.Name, time.Since(start).Round(time.Millisecond), nd.Name, err, bad.Name, c.logs())
		bad.Stop()
		bad.Start()
		c.WaitHealthy(within)
	}
	return time.Since(start)
}

// Connect opens a client connection to every node (closed when the test
// ends) that reconnects forever, as kgentsd's does.
func (c *NATS) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// URL is the node's client URL.
func (nd *Node) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", nd.Port) }

// Logs is what the node wrote so far (all its runs).
func (nd *Node) Logs() string {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.logs == nil {
		return ""
	}
	return nd.logs.String()
}

func (nd *Node) start(bin string) {
	nd.t.Helper()
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd != nil {
		nd.t.Fatalf("cluster: node %s is already running", nd.Name)
	}
	if nd.logs == nil {
		nd.logs = &servertest.SyncBuffer{}
	}
	cmd := exec.Command(bin, "-c", nd.conf)
	cmd.Stdout, cmd.Stderr = nd.logs, nd.logs
	if err := cmd.Start(); err != nil {
		nd.t.Fatalf("cluster: start %s: %v", nd.Name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	nd.cmd, nd.done = cmd, done
}

// Start starts a stopped node again: same ports, same store.
func (nd *Node) Start() {
	nd.t.Helper()
	nd.start(NATSServerBinary(nd.t))
}

// Running reports whether the node's process is up.
func (nd *Node) Running() bool {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.cmd != nil
}

// Pid is the running process's id (0 when stopped).
func (nd *Node) Pid() int {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil || nd.cmd.Process == nil {
		return 0
	}
	return nd.cmd.Process.Pid
}

// Kill is kill -9 (a no-op on a stopped node).
func (nd *Node) Kill() { nd.signal(syscall.SIGKILL, 10*time.Second) }

// Stop is a graceful stop (SIGTERM: the node hands its raft leaderships
// over and closes its store), waiting for the exit.
func (nd *Node) Stop() { nd.signal(syscall.SIGTERM, 30*time.Second) }

func (nd *Node) signal(sig syscall.Signal, within time.Duration) {
	nd.mu.Lock()
	cmd, done := nd.cmd, nd.done
	nd.cmd, nd.done = nil, nil
	nd.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case err := <-done:
		_ = err // a stopped node's exit status is not the test's concern
	case <-time.After(within):
		_ = cmd.Process.Kill()
		_ = drain(done)
	}
}

// Healthy is the node's /healthz: nil when its JetStream is current.
func (nd *Node) Healthy(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/healthz", nd.MonitorPort), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		sc := bufio.NewScanner(resp.Body)
		sc.Scan()
		return fmt.Errorf("%s /healthz: %d %s", nd.Name, resp.StatusCode, sc.Text())
	}
	return nil
}

// meaningfulLogs is Logs without the health-check warnings that polling
// /healthz makes the node print every 50 ms (they would fill any tail).
func (nd *Node) meaningfulLogs() string {
	var b strings.Builder
	for line := range strings.Lines(nd.Logs()) {
		if !strings.Contains(line, "Healthcheck failed") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// WaitHealthy waits until the node is healthy.
func (nd *Node) WaitHealthy(within time.Duration) {
	nd.t.Helper()
	if err := nd.waitHealthy(within); err != nil {
		nd.t.Fatalf("cluster: node %s not healthy: %v\n%s", nd.Name, err, tail(nd.meaningfulLogs(), 6000))
	}
}

func (nd *Node) waitHealthy(within time.Duration) error {
	return Poll(within, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		nd.mu.Lock()
		done := nd.done
		nd.mu.Unlock()
		if done == nil {
			return fmt.Errorf("%s is not running", nd.Name)
		}
		select {
		case err := <-done:
			done <- err
			return Stop(exitErr(nd.Name, err))
		default:
		}
		return nd.Healthy(ctx)
	})
}

// Poll calls fn every 50 ms until it returns nil or within has passed,
// returning fn's last error then.
func Poll(within time.Duration, fn func() error) error {
	deadline := time.Now().Add(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := fn()
		if err == nil {
			return nil
		}
		var stop stopErr
		if errors.As(err, &stop) || time.Now().After(deadline) {
			return err
		}
		<-tick.C
	}
}

type stopErr struct{ error }

// Stop wraps an error that ends a Poll at once.
func Stop(err error) error { return stopErr{err} }

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// exitErr says that a process ended, with its exit error if any.
func exitErr(name string, err error) error {
	if err == nil {
		return fmt.Errorf("%s exited", name)
	}
	return fmt.Errorf("%s exited: %w", name, err)
}

// StartStandalone starts one nats-server with JetStream and no cluster (as
// a small deployment runs it), on loopback with a monitoring port, and
// waits until it is healthy. It is killed when the test ends. Being its
// own process, its memory is its own (Monitor), unlike an embedded server's.
func StartStandalone(t testing.TB) *Node {
	t.Helper()
	bin := NATSServerBinary(t)
	nd := &Node{t: t, Name: "standalone", Port: FreePort(t), MonitorPort: FreePort(t), dir: t.TempDir()}
	nd.conf = filepath.Join(nd.dir, "nats.conf")
	conf := fmt.Sprintf(`server_name: standalone
host: 127.0.0.1
port: %d
http: "127.0.0.1:%d"
jetstream {
  store_dir: %q
  max_memory_store: 256MB
  max_file_store: 2GB
}
`, nd.Port, nd.MonitorPort, filepath.Join(nd.dir, "jetstream"))
	if err := os.WriteFile(nd.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	nd.start(bin)
	t.Cleanup(nd.Kill)
	nd.WaitHealthy(60 * time.Second)
	return nd
}

// Monitor is what a node's monitoring endpoints (/varz, /jsz) say about it.
type Monitor struct {
	// Mem is the server process's resident memory, as it reports it.
	Mem int64
	// Consumers and Streams are JetStream's totals; JSMemory and JSStore the
	// bytes its memory and file storage hold.
	Consumers, Streams int
	JSMemory, JSStore  uint64
	// ConsumerNames is every consumer as stream/name.
	ConsumerNames []string
}

// Monitor reads the node's /varz and /jsz.
func (nd *Node) Monitor(ctx context.Context) (Monitor, error) {
	var varz struct {
		Mem int64 `json:"mem"`
	}
	var jsz struct {
		Streams   int    `json:"streams"`
		Consumers int    `json:"consumers"`
		Memory    uint64 `json:"memory"`
		Store     uint64 `json:"storage"`
		Accounts  []struct {
			Streams []struct {
				Name      string `json:"name"`
				Consumers []struct {
					Name string `json:"name"`
				} `json:"consumer_detail"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	for path, out := range map[string]any{"/varz": &varz, "/jsz?accounts=true&streams=true&consumers=true": &jsz} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", nd.MonitorPort, path), nil)
		if err != nil {
			return Monitor{}, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return Monitor{}, err
		}
		err = json.NewDecoder(resp.Body).Decode(out)
		_ = resp.Body.Close()
		if err != nil {
			return Monitor{}, fmt.Errorf("%s %s: %w", nd.Name, path, err)
		}
	}
	m := Monitor{Mem: varz.Mem, Consumers: jsz.Consumers, Streams: jsz.Streams, JSMemory: jsz.Memory, JSStore: jsz.Store}
	for _, a := range jsz.Accounts {
		for _, st := range a.Streams {
			for _, c := range st.Consumers {
				m.ConsumerNames = append(m.ConsumerNames, st.Name+"/"+c.Name)
			}
		}
	}
	slices.Sort(m.ConsumerNames)
	return m, nil
}
