package streaming

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/streaming/natstest"
)

// direct is a plain client of a backend, to look at what kgentsd left there.
func direct(t *testing.T, addr string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect("nats://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func streamNames(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var names []string
	l := js.StreamNames(ctx)
	for n := range l.Name() {
		names = append(names, n)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// versionHarness is a Conn and a Publisher on a proxied URL, with their
// logs and a count of OnConnect calls (each would create kgentsd's streams).
type versionHarness struct {
	proxy *natstest.Proxy
	conn  *Conn
	pub   *testPub
	logs  *syncBuffer

	mu       sync.Mutex
	connects []string // the server version each OnConnect call saw
}

// connectsTo counts the OnConnect calls made on a server of version v.
func (h *versionHarness) connectsTo(v string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, c := range h.connects {
		if c == v {
			n++
		}
	}
	return n
}

func newVersionHarness(t *testing.T, proxy *natstest.Proxy) *versionHarness {
	t.Helper()
	h := &versionHarness{proxy: proxy, logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, err := Connect(context.Background(), Options{
		Enabled: true, Servers: []string{proxy.URL()}, ConnectTimeout: 100 * time.Millisecond,
		Name: "version-test", Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	h.conn = c
	c.OnConnect(func() {
		v := c.NATS().ConnectedServerVersion()
		h.mu.Lock()
		h.connects = append(h.connects, v)
		h.mu.Unlock()
	})
	h.pub = newTestPub(t, c, "", nil)
	return h
}

// checkRefused asserts kgentsd does not use the old server behind the proxy:
// not Connected, no OnConnect hooks since before, an ERROR naming the
// version, health says incompatible, and a publish goes to the spool — not
// to the old server's stream that would take it.
func (h *versionHarness) checkRefused(t *testing.T, old natstest.OldServer, js jetstream.JetStream) {
	t.Helper()
	eventually(t, 20*time.Second, "the connection to reach the old server", func() bool {
		return h.conn.NATS().ConnectedServerVersion() == old.Version
	})
	if h.conn.Connected() {
		t.Error("Connected() is true on a server older than " + MinServerVersion)
	}
	st := h.conn.Status()
	if !st.Incompatible || st.Connected || !strings.Contains(st.Error, old.Version) || !strings.Contains(st.Error, "too old") {
		t.Errorf("Status on an old server = %+v, want incompatible with an error naming %s", st, old.Version)
	}
	// The publisher has its own connection: it reaches the old server too.
	eventually(t, 20*time.Second, "the publisher's connection to reach the old server", func() bool {
		return h.pub.nc.ConnectedServerVersion() == old.Version
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.pub.PublishDurable(ctx, msg("kgent.session.s1.message", "old-1")); err != nil {
		t.Fatalf("PublishDurable while on an old server: %v", err)
	}
	if hl := h.pub.Health(); hl.SpoolDepth != 1 || hl.Mode != "fallback" {
		t.Errorf("publisher on an old server: %+v, want the message in the spool (fallback)", hl)
	}
	// Anyone else's use of the Conn's JetStream (a bucket created on first
	// use, a direct publish) is refused too.
	if _, err := h.conn.JetStream().CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "lazy"}); !errors.Is(err, ErrIncompatibleServer) {
		t.Errorf("creating a bucket on the old server: %v, want ErrIncompatibleServer", err)
	}
	if _, err := h.conn.JetStream().Publish(ctx, "kgent.session.s1.chunk", []byte("{}")); !errors.Is(err, ErrIncompatibleServer) {
		t.Errorf("publishing to the old server: %v, want ErrIncompatibleServer", err)
	}
	// The old server: only the probe stream, which got nothing.
	if names := streamNames(t, js); len(names) != 1 || names[0] != "probe" {
		t.Errorf("streams on the old server: %v, want only the test's probe (kgentsd must create none)", names)
	}
	if n := streamMsgs(t, js, "probe"); n != 0 {
		t.Errorf("kgentsd published %d messages to the old server", n)
	}
	if n := h.connectsTo(old.Version); n != 0 {
		t.Errorf("OnConnect ran %d times on the old server (kgentsd creates its streams there)", n)
	}
	logs := h.logs.String()
	if !regexp.MustCompile(`level=ERROR msg="NATS server ` + regexp.QuoteMeta(old.Version) + ` is too old`).MatchString(logs) {
		t.Errorf("no ERROR about the old server in the logs:\n%s", logs)
	}
}

func createProbe(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "probe", Subjects: []string{"kgent.>"}}); err != nil {
		t.Fatal(err)
	}
}

// TestConnRefusesOldServerAfterDegradedStart: kgentsd starts while NATS is
// unreachable; the server that then comes up is older than 2.11. The first
// connection must be checked like the one at start: not used, said at ERROR
// and in the status.
func TestConnRefusesOldServerAfterDegradedStart(t *testing.T) {
	for _, oc := range natstest.OldCases {
		t.Run(oc.Name, func(t *testing.T) {
			old, rewrite := oc.Start(t, MinServerVersion)
			js := direct(t, old.Addr)
			createProbe(t, js)

			proxy := natstest.StartProxy(t) // refusing: NATS is down
			h := newVersionHarness(t, proxy)
			if h.conn.Connected() {
				t.Fatal("connected before any server is up")
			}
			proxy.Route(old.Addr, rewrite)
			h.checkRefused(t, old, js)
		})
	}
}

// TestConnRefusesOldServerOnReconnect: kgentsd runs on a current server;
// the URL then leads to an old one (a reconnect to a different server). It
// stops using NATS until a current server is back, then replays the spool.
func TestConnRefusesOldServerOnReconnect(t *testing.T) {
	for _, oc := range natstest.OldCases {
		t.Run(oc.Name, func(t *testing.T) {
			current := natstest.Start(t)
			currentAddr := strings.TrimPrefix(current.URL(), "nats://")
			old, rewrite := oc.Start(t, MinServerVersion)
			oldJS := direct(t, old.Addr)
			createProbe(t, oldJS)
			_, curJS := current.Connect(t)
			createStream(t, curJS)

			proxy := natstest.StartProxy(t)
			proxy.Route(currentAddr, "")
			h := newVersionHarness(t, proxy)
			eventually(t, 10*time.Second, "a healthy publisher on the current server", func() bool {
				return h.conn.Connected() && h.pub.Health().State == PublisherHealthy
			})
			curVersion := h.conn.NATS().ConnectedServerVersion()

			proxy.Route(old.Addr, rewrite)
			h.checkRefused(t, old, oldJS)

			// A current server again: used at once, and the spool replayed to it.
			before := h.connectsTo(curVersion)
			proxy.Route(currentAddr, "")
			eventually(t, 20*time.Second, "the connection to be used again", func() bool {
				return h.conn.Connected() && h.conn.Status().Error == "" && h.connectsTo(curVersion) > before
			})
			eventually(t, 20*time.Second, "the spool to be replayed to the current server", func() bool {
				hl := h.pub.Health()
				return hl.SpoolDepth == 0 && hl.State == PublisherHealthy
			})
			if got := streamContents(t, curJS); len(got) != 1 {
				t.Errorf("after the upgrade the current server has %d messages, want the spooled one", len(got))
			}
		})
	}
}

// TestConnRefusesOldServerAtStart: an external server older than the
// minimum reached at start fails the start with an error naming its version.
func TestConnRefusesOldServerAtStart(t *testing.T) {
	for _, oc := range natstest.OldCases {
		t.Run(oc.Name, func(t *testing.T) {
			old, rewrite := oc.Start(t, MinServerVersion)
			proxy := natstest.StartProxy(t)
			proxy.Route(old.Addr, rewrite)
			c, err := Connect(context.Background(), Options{
				Enabled: true, Servers: []string{proxy.URL()}, ConnectTimeout: 10 * time.Second,
				Name: "version-test", Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil)),
			})
			if err == nil {
				c.Close(context.Background())
				t.Fatalf("Connect to NATS %s succeeded, want a refusal", old.Version)
			}
			if !strings.Contains(err.Error(), old.Version) || !strings.Contains(err.Error(), MinServerVersion) {
				t.Errorf("Connect to NATS %s: %v, want an error naming both versions", old.Version, err)
			}
		})
	}
}

// TestServerVersionFloor: the versions around the floor. 2.10 lacks the
// batched direct get every read uses (direct.go), so it is refused.
func TestServerVersionFloor(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		v  string
		ok bool
	}{
		{"", true}, // not connected: not a refusal
		{"2.9.25", false},
		{"2.10.0", false},
		{"2.10.27", false},
		{"2.11.0", true},
		{"2.11.0-RC.1", true},
		{"2.11.17", true},
		{"2.15.2", true},
		{"3.0.0", true},
	} {
		if got := serverVersionOK(c.v); got != c.ok {
			t.Errorf("serverVersionOK(%q) = %v, want %v", c.v, got, c.ok)
		}
	}
}
