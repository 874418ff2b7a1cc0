// Package streaming owns kgentsd's NATS: the embedded server or the
// connection to an external cluster, the JetStream streams and buckets the
// service uses, and (from the fan-out work) publishing, watching, the circuit
// breaker, the in-process fallback hub and the local spool.
//
// The rest of the code sees one type, *Conn, whatever the mode: embedded
// (NATS_SERVERS unset: an in-process nats-server with JetStream under the data
// directory), external (a cluster, reconnecting forever), or disabled
// (NATS_ENABLED=false: no NATS at all, for tests and single-process use).
package streaming

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Mode says where NATS comes from.
type Mode string

// The modes.
const (
	ModeDisabled Mode = "disabled"
	ModeEmbedded Mode = "embedded"
	ModeExternal Mode = "external"
)

// MinServerVersion is the oldest external NATS kgentsd works with (KV key
// filters and create-or-update of streams need 2.10).
const MinServerVersion = "2.10.0"

// Options configure Connect.
type Options struct {
	Enabled bool
	// External servers; empty means embedded.
	Servers []string
	// Embedded server: loopback port (-1 picks a free one) and JetStream store directory.
	EmbeddedPort int
	StoreDir     string
	// External security.
	Creds, TLSCA, TLSCert, TLSKey string
	// How long Connect waits for the first connection to an external cluster
	// before returning anyway (it keeps trying in the background).
	ConnectTimeout time.Duration
	// Client name shown by the NATS server.
	Name   string
	Logger *slog.Logger
}

// Conn is kgentsd's connection to NATS.
type Conn struct {
	mode     Mode
	log      *slog.Logger
	nc       *nats.Conn
	js       jetstream.JetStream
	embedded *server.Server

	closing     atomic.Bool
	mu          sync.Mutex
	onReconnect []func()
	onDisconn   []func()
	incompatErr atomic.Pointer[string]
}

// Connect starts or connects to NATS as the options say. With an external
// cluster it retries forever: if the cluster is unreachable, Connect returns
// after ConnectTimeout with a Conn that is not yet connected.
func Connect(ctx context.Context, o Options) (*Conn, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Conn{log: log.With("component", "nats")}
	if !o.Enabled {
		c.mode = ModeDisabled
		return c, nil
	}
	if o.Name == "" {
		o.Name = "kgentsd"
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		// Publishes made while disconnected are buffered up to this size;
		// the fan-out layer keeps its own durable spool, so keep it modest.
		nats.ReconnectBufSize(8 << 20),
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if c.closing.Load() {
				return
			}
			c.log.Warn("nats disconnected", "error", err)
			c.fire(false)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			c.log.Info("nats reconnected", "server", c.serverName(nc))
			_ = c.checkVersion(nc) // logs and marks the connection unusable
			c.fire(true)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			c.log.Warn("nats async error", "subject", subj, "error", err)
		}),
	}

	var url string
	if len(o.Servers) == 0 {
		srv, err := startEmbedded(o, c.log)
		if err != nil {
			return nil, err
		}
		c.mode = ModeEmbedded
		c.embedded = srv
		opts = append(opts, nats.InProcessServer(srv))
	} else {
		c.mode = ModeExternal
		url = strings.Join(o.Servers, ",")
		sec, err := securityOptions(o)
		if err != nil {
			return nil, err
		}
		opts = append(opts, sec...)
	}

	connected := make(chan struct{}, 1)
	opts = append(opts, nats.ConnectHandler(func(nc *nats.Conn) {
		c.log.Info("nats connected", "server", c.serverName(nc), "version", nc.ConnectedServerVersion())
		select {
		case connected <- struct{}{}:
		default:
		}
		c.fire(true)
	}))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		c.shutdownEmbedded()
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	c.nc = nc
	if nc.IsConnected() {
		select {
		case connected <- struct{}{}:
		default:
		}
	}
	if c.mode == ModeExternal && !nc.IsConnected() {
		timeout := o.ConnectTimeout
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-connected:
		case <-t.C:
			c.log.Warn("nats not reachable yet; starting degraded and retrying in the background", "servers", redactServers(o.Servers))
		case <-ctx.Done():
			nc.Close()
			return nil, ctx.Err()
		}
	}
	if nc.IsConnected() {
		c.log.Info("nats connected", "server", c.serverName(nc), "version", nc.ConnectedServerVersion())
		if err := c.checkVersion(nc); err != nil {
			nc.Close()
			return nil, err
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		c.Close(context.Background())
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c.js = js
	return c, nil
}

// serverName is the connected server for logs (the embedded server is
// reached in process, without its URL).
func (c *Conn) serverName(nc *nats.Conn) string {
	if c.embedded != nil {
		return "embedded (in process)"
	}
	return nc.ConnectedUrlRedacted()
}

// checkVersion refuses servers older than MinServerVersion.
func (c *Conn) checkVersion(nc *nats.Conn) error {
	v := nc.ConnectedServerVersion()
	if v == "" || versionAtLeast(v, MinServerVersion) {
		c.incompatErr.Store(nil)
		return nil
	}
	msg := fmt.Sprintf("NATS server %s is too old: kgentsd needs %s or newer", v, MinServerVersion)
	c.incompatErr.Store(&msg)
	c.log.Error(msg)
	return errors.New(msg)
}

// versionAtLeast compares dotted versions numerically ("2.9.25" < "2.10.0").
func versionAtLeast(have, want string) bool {
	h := strings.Split(strings.SplitN(have, "-", 2)[0], ".")
	w := strings.Split(want, ".")
	for i := 0; i < len(w); i++ {
		var hv, wv int
		if i < len(h) {
			_, _ = fmt.Sscanf(h[i], "%d", &hv)
		}
		_, _ = fmt.Sscanf(w[i], "%d", &wv)
		if hv != wv {
			return hv > wv
		}
	}
	return true
}

func (c *Conn) fire(up bool) {
	c.mu.Lock()
	fns := c.onDisconn
	if up {
		fns = c.onReconnect
	}
	fns = append([]func(){}, fns...)
	c.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// OnConnect registers fn to run (on a NATS callback goroutine; it must not
// block long) every time the connection is established or re-established.
func (c *Conn) OnConnect(fn func()) {
	c.mu.Lock()
	c.onReconnect = append(c.onReconnect, fn)
	c.mu.Unlock()
}

// OnDisconnect registers fn to run every time the connection drops.
func (c *Conn) OnDisconnect(fn func()) {
	c.mu.Lock()
	c.onDisconn = append(c.onDisconn, fn)
	c.mu.Unlock()
}

// Mode says whether NATS is embedded, external or disabled.
func (c *Conn) Mode() Mode { return c.mode }

// Enabled reports whether there is NATS at all.
func (c *Conn) Enabled() bool { return c.mode != ModeDisabled }

// NATS is the core connection; nil when disabled.
func (c *Conn) NATS() *nats.Conn { return c.nc }

// JetStream is the JetStream context; nil when disabled.
func (c *Conn) JetStream() jetstream.JetStream { return c.js }

// Connected reports whether the connection is up (and the server compatible).
func (c *Conn) Connected() bool {
	return c.nc != nil && c.nc.IsConnected() && c.incompatErr.Load() == nil
}

// ClientURL is where other processes reach the embedded server ("" otherwise).
func (c *Conn) ClientURL() string {
	if c.embedded == nil {
		return ""
	}
	return c.embedded.ClientURL()
}

// Status is the connection's state for health reports.
type Status struct {
	Mode      Mode   `json:"mode"`
	Connected bool   `json:"connected"`
	Server    string `json:"server,omitempty"`
	Version   string `json:"version,omitempty"`
	Error     string `json:"error,omitempty"`
}

// Status reports the connection's state.
func (c *Conn) Status() Status {
	s := Status{Mode: c.mode}
	if c.nc == nil {
		return s
	}
	s.Connected = c.Connected()
	if c.nc.IsConnected() {
		s.Server = c.serverName(c.nc)
		s.Version = c.nc.ConnectedServerVersion()
	}
	if e := c.incompatErr.Load(); e != nil {
		s.Error = *e
	} else if err := c.nc.LastError(); err != nil && !s.Connected {
		s.Error = err.Error()
	}
	return s
}

// Close drains the connection (flushing pending publishes) and stops the
// embedded server. It honours ctx's deadline.
func (c *Conn) Close(ctx context.Context) {
	c.closing.Store(true)
	if c.nc != nil {
		done := make(chan struct{})
		c.nc.SetClosedHandler(func(*nats.Conn) { close(done) })
		if err := c.nc.Drain(); err != nil {
			c.nc.Close()
		} else {
			select {
			case <-done:
			case <-ctx.Done():
				c.nc.Close()
			}
		}
	}
	c.shutdownEmbedded()
}

func (c *Conn) shutdownEmbedded() {
	if c.embedded != nil {
		c.embedded.Shutdown()
		c.embedded.WaitForShutdown()
		c.embedded = nil
	}
}

func securityOptions(o Options) ([]nats.Option, error) {
	var opts []nats.Option
	if o.Creds != "" {
		if _, err := os.Stat(o.Creds); err != nil {
			return nil, fmt.Errorf("NATS_CREDS: %w", err)
		}
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.TLSCA != "" || o.TLSCert != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.TLSCA != "" {
			pem, err := os.ReadFile(o.TLSCA)
			if err != nil {
				return nil, fmt.Errorf("NATS_TLS_CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("NATS_TLS_CA: no certificates in %s", o.TLSCA)
			}
			cfg.RootCAs = pool
		}
		if o.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
			if err != nil {
				return nil, fmt.Errorf("NATS_TLS_CERT/NATS_TLS_KEY: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(cfg))
	}
	return opts, nil
}

// redactServers hides credentials embedded in server URLs.
func redactServers(servers []string) []string {
	out := make([]string, len(servers))
	for i, s := range servers {
		if at := strings.LastIndex(s, "@"); at >= 0 {
			if scheme := strings.Index(s, "://"); scheme >= 0 && scheme < at {
				s = s[:scheme+3] + "***" + s[at:]
			}
		}
		out[i] = s
	}
	return out
}
