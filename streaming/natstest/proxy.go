package natstest

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy in front of a NATS server, standing in for "the
// server at this address": it can refuse connections (the server is down),
// switch to another backend (a different server behind the same URL), drop
// every connection (forcing a reconnect), and optionally rewrite the
// version in the server's INFO line, which is where a client learns it.
type Proxy struct {
	ln net.Listener

	mu      sync.Mutex
	backend string // "" refuses connections
	version string // rewrites INFO's version when set
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// StartProxy listens on a free loopback port, refusing connections until
// Route gives it a backend; it stops when the test ends.
func StartProxy(t testing.TB) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// URL is the proxy's client URL.
func (p *Proxy) URL() string { return "nats://" + p.ln.Addr().String() }

// Route sends new connections to backend (host:port), rewriting INFO's
// version to version unless it is "", and drops the current ones.
func (p *Proxy) Route(backend, version string) {
	p.mu.Lock()
	p.backend, p.version = backend, version
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
}

func (p *Proxy) close() {
	_ = p.ln.Close()
	p.Route("", "")
	p.wg.Wait()
}

func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.backend == "" {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

var infoVersion = regexp.MustCompile(`"version":"[^"]*"`)

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		backend, version := p.backend, p.version
		p.mu.Unlock()
		if backend == "" {
			_ = client.Close()
			continue
		}
		server, err := net.Dial("tcp", backend)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client, server) {
			_ = client.Close()
			_ = server.Close()
			continue
		}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			defer func() { _ = client.Close(); _ = server.Close() }()
			br := bufio.NewReader(server)
			if version == "" {
				_, _ = io.Copy(client, br)
				return
			}
			// The server sends INFO again after CONNECT: follow the protocol
			// (control lines; MSG/HMSG payloads by their sizes) and rewrite
			// every INFO.
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				payload := 0
				switch f := strings.Fields(line); {
				case len(f) > 0 && f[0] == "INFO":
					line = infoVersion.ReplaceAllString(line, `"version":"`+version+`"`)
				case len(f) > 0 && (f[0] == "MSG" || f[0] == "HMSG"):
					payload, _ = strconv.Atoi(f[len(f)-1])
					payload += 2 // CRLF
				}
				if _, err := io.WriteString(client, line); err != nil {
					return
				}
				if payload > 0 {
					if _, err := io.CopyN(client, br, int64(payload)); err != nil {
						return
					}
				}
			}
		}()
		go func() {
			defer p.wg.Done()
			defer func() { _ = client.Close(); _ = server.Close() }()
			_, _ = io.Copy(server, client)
		}()
	}
}

// OldServer is a NATS server older than MinServerVersion with JetStream.
type OldServer struct {
	Addr    string // host:port
	Version string
}

// OldBinaryEnv names a nats-server binary for OldCase.Start to run instead of the
// one on PATH (e.g. a v2.10 built with `GOBIN=/tmp/old go install
// github.com/nats-io/nats-server/v2@v2.10.27`).
const OldBinaryEnv = "KGENTS_OLD_NATS_SERVER"

// OldCase is one way to stand up a server older than the minimum: a real
// binary or a current server whose INFO the proxy rewrites.
type OldCase struct {
	Name    string
	Real    bool
	Version string // the version the proxy presents (not Real)
}

// OldCases are the old servers every version test runs against: the real
// binary (OldBinaryEnv, else the machine's own; skipped when it is not
// older) and current servers presented as a 2.9 (no KV key filters) and as
// the last 2.10 release (no batched direct gets).
var OldCases = []OldCase{
	{Name: "real old nats-server", Real: true},
	{Name: "INFO says 2.9.0", Version: "2.9.0"},
	{Name: "INFO says 2.10.27", Version: "2.10.27"},
}

// Start runs c's server behind nothing yet, and returns it with the version
// a Proxy in front of it must rewrite INFO to ("" for none). A real binary
// (OldBinaryEnv, else the one on PATH) runs on a free port if it is older
// than minVersion; the test is skipped otherwise.
func (c OldCase) Start(t testing.TB, minVersion string) (srv OldServer, rewrite string) {
	t.Helper()
	if !c.Real {
		if !olderThan(c.Version, minVersion) {
			t.Fatalf("natstest: %s is not older than %s", c.Version, minVersion)
		}
		s := Start(t)
		return OldServer{Addr: strings.TrimPrefix(s.URL(), "nats://"), Version: c.Version}, c.Version
	}
	return startOldBinary(t, minVersion), ""
}

func startOldBinary(t testing.TB, minVersion string) OldServer {
	t.Helper()
	bin := os.Getenv(OldBinaryEnv)
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("nats-server"); err != nil {
			t.Skip("no nats-server binary installed")
		}
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Skipf("nats-server --version: %v", err)
	}
	v := regexp.MustCompile(`v?(\d+\.\d+\.\d+)`).FindStringSubmatch(string(out))
	if v == nil || !olderThan(v[1], minVersion) {
		t.Skipf("the installed nats-server (%s) is not older than %s", strings.TrimSpace(string(out)), minVersion)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-done:
			t.Fatalf("nats-server %s exited", v[1])
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server %s does not accept connections", v[1])
		}
		time.Sleep(20 * time.Millisecond) // polling for the port, not a wait in place of one
	}
	return OldServer{Addr: addr, Version: v[1]}
}

// olderThan compares dotted versions numerically ("2.9.25" < "2.10.0").
func olderThan(have, want string) bool {
	h, w := strings.Split(have, "."), strings.Split(want, ".")
	for i := range w {
		var hv, wv int
		if i < len(h) {
			hv, _ = strconv.Atoi(h[i])
		}
		wv, _ = strconv.Atoi(w[i])
		if hv != wv {
			return hv < wv
		}
	}
	return false
}
