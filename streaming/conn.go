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

// MinServerVersion is the oldest external NATS kgentsd works with. Every
// read of stored messages is a batched direct get (batch, multi_last:
// direct.go), which arrived in 2.11; a 2.10 server ignores the batch and
// never sends the end-of-batch marker, so each history page or watch
// catch-up would wait out DirectReadTimeout and fail (measured against
// nats-server v2.10.27). Refusing 2.10 is simpler and safer than a second,
// per-message read path that would cost O(page) round trips and be tested
// on no server we deploy.
const MinServerVersion = "2.11.0"

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
	// storeRelease unlocks the embedded server's store (after its shutdown).
	storeRelease func()
	embeddedStop sync.Once

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
			c.log.Info("nats reconnected", "server", c.serverName(nc), "version", nc.ConnectedServerVersion())
			// Perhaps to another server of the list: check it again. An
			// incompatible one is not used (no OnConnect hooks: no streams
			// are created on it); kgentsd stays in fallback mode.
			if c.checkVersion(nc) != nil {
				return
			}
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
		srv, release, err := startEmbedded(o, c.log)
		if err != nil {
			return nil, err
		}
		c.mode = ModeEmbedded
		c.embedded, c.storeRelease = srv, release
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
		// The first connection may come long after Connect returned (a
		// degraded start): check the server here too, not only at start.
		if c.checkVersion(nc) != nil {
			return
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
			c.log.Warn("nats not reachable yet; starting degraded and retrying in the background", "servers", RedactServers(o.Servers))
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
	c.js = guardedJetStream{JetStream: js, c: c}
	return c, nil
}

// ErrIncompatibleServer is returned by the JetStream context of a Conn
// connected to a server older than MinServerVersion, for every call that
// would create or change a stream, bucket or object store, or publish.
var ErrIncompatibleServer = errors.New("nats: the connected NATS server is older than " + MinServerVersion + "; kgentsd does not use it")

// guardedJetStream is the JetStream context every user of the Conn gets. On
// an incompatible server it refuses to create or change resources and to
// publish (ErrIncompatibleServer), whoever calls it and whenever: the
// connection callbacks and Connected already keep kgentsd's own start-up
// work away from such a server, this keeps away any lazily created bucket
// or direct publish too.
type guardedJetStream struct {
	jetstream.JetStream
	c *Conn
}

// errChangeWhileDisconnected refuses a resource change while not connected:
// the client would buffer the request and send it to whichever server it
// reaches next, before anyone has checked that server's version.
var errChangeWhileDisconnected = errors.New("nats: not connected; streams and buckets are created once connected")

// refuseChange guards creating or changing resources: a compatible server,
// connected now.
func (g guardedJetStream) refuseChange() error {
	if nc := g.c.nc; nc != nil && !nc.IsConnected() {
		return errChangeWhileDisconnected
	}
	return g.refuse()
}

func (g guardedJetStream) refuse() error {
	if nc := g.c.nc; nc != nil && !serverVersionOK(nc.ConnectedServerVersion()) {
		return ErrIncompatibleServer
	}
	return nil
}

func (g guardedJetStream) Publish(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if err := g.refuse(); err != nil {
		return nil, err
	}
	return g.JetStream.Publish(ctx, subj, data, opts...)
}

func (g guardedJetStream) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if err := g.refuse(); err != nil {
		return nil, err
	}
	return g.JetStream.PublishMsg(ctx, m, opts...)
}

func (g guardedJetStream) PublishAsync(subj string, data []byte, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if err := g.refuse(); err != nil {
		return nil, err
	}
	return g.JetStream.PublishAsync(subj, data, opts...)
}

func (g guardedJetStream) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if err := g.refuse(); err != nil {
		return nil, err
	}
	return g.JetStream.PublishMsgAsync(m, opts...)
}

func (g guardedJetStream) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if err := g.refuseChange(); err != nil {
		return nil, err
	}
	return g.JetStream.CreateStream(ctx, cfg)
}

func (g guardedJetStream) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if err := g.refuseChange(); err != nil {
		return nil, err
	}
	return g.JetStream.UpdateStream(ctx, cfg)
}

func (g guardedJetStream) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if err := g.refuseChange(); err != nil {
		return nil, err
	}
	if s, ok := g.existingStream(ctx, cfg); ok {
		return s, nil // as asked already: no update (ensure.go)
	}
	return g.JetStream.CreateOrUpdateStream(ctx, cfg)
}

func (g guardedJetStream) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if err := g.refuseChange(); err != nil {
		return nil, err
	}
	return g.JetStream.CreateKeyValue(ctx, cfg)
}

func (g guardedJetStream) UpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if err := g.refuseChange(); err != nil {
		return nil, err
	}
	return g.JetStream.UpdateKeyValue(ctx, cfg)
}

func (g guardedJetStream) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if err := g.refuseChange(); err != nil {
		return nil, err
	}
	if kv, ok := g.existingKeyValue(ctx, cfg); ok {
		return kv, nil // as asked already: no update (ensure.go)
	}
	return g.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
}

func (g guardedJetStream) CreateObjectStore(ctx context.Context, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	if err := g.refuseChange(); err != nil {
		return nil, err
	}
	return g.JetStream.CreateObjectStore(ctx, cfg)
}

func (g guardedJetStream) UpdateObjectStore(ctx context.Context, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	if err := g.refuseChange(); err != nil {
		return nil, err
	}
	return g.JetStream.UpdateObjectStore(ctx, cfg)
}

func (g guardedJetStream) CreateOrUpdateObjectStore(ctx context.Context, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	if err := g.refuseChange(); err != nil {
		return nil, err
	}
	return g.JetStream.CreateOrUpdateObjectStore(ctx, cfg)
}

// serverName is the connected server for logs (the embedded server is
// reached in process, without its URL).
func (c *Conn) serverName(nc *nats.Conn) string {
	if c.embedded != nil {
		return "embedded (in process)"
	}
	return nc.ConnectedUrlRedacted()
}

// checkVersion refuses servers older than MinServerVersion: it logs at
// ERROR and records the refusal (Status). It runs on every connection and
// reconnection; Connected also checks the live server on every call, so the
// moments before this callback runs cannot use an incompatible server either.
func (c *Conn) checkVersion(nc *nats.Conn) error {
	v := nc.ConnectedServerVersion()
	if serverVersionOK(v) {
		c.incompatErr.Store(nil)
		return nil
	}
	msg := incompatibleMessage(v)
	c.incompatErr.Store(&msg)
	c.log.Error(msg+"; kgentsd does not use it (no streams created, nothing published) and stays in fallback mode", "server", c.serverName(nc))
	return errors.New(msg)
}

func incompatibleMessage(v string) string {
	return fmt.Sprintf("NATS server %s is too old: kgentsd needs %s or newer", v, MinServerVersion)
}

// lastGoodVersion caches the last server version serverVersionOK accepted,
// so the per-call check of Connected is a string comparison.
var lastGoodVersion atomic.Pointer[string]

// serverVersionOK reports whether a connected server's version is one
// kgentsd uses ("" — not connected — is not a refusal).
func serverVersionOK(v string) bool {
	if v == "" {
		return true
	}
	if good := lastGoodVersion.Load(); good != nil && *good == v {
		return true
	}
	if !versionAtLeast(v, MinServerVersion) {
		return false
	}
	lastGoodVersion.Store(&v)
	return true
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

// Connected reports whether the connection is up and the server it is
// connected to right now is compatible (MinServerVersion).
func (c *Conn) Connected() bool {
	return c.nc != nil && c.nc.IsConnected() && serverVersionOK(c.nc.ConnectedServerVersion())
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
	// Incompatible: connected to a server kgentsd refuses to use (older
	// than MinServerVersion); Error says so.
	Incompatible bool   `json:"incompatible,omitempty"`
	Error        string `json:"error,omitempty"`
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
		if !serverVersionOK(s.Version) {
			s.Incompatible, s.Error = true, incompatibleMessage(s.Version)
			return s
		}
	}
	if e := c.incompatErr.Load(); e != nil && !s.Connected {
		s.Error = *e // the last server reached was refused
	} else if err := c.nc.LastError(); err != nil && !s.Connected {
		s.Error = err.Error()
	}
	return s
}

// Close drains the connection (flushing pending publishes) and stops the
// embedded server. It honours ctx's deadline: an embedded server still
// shutting down then is left to finish while the process lives (a process
// that exits first leaves its store as a crash would, and JetStream
// recovers it at the next start).
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
	if c.embedded == nil && c.storeRelease == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.shutdownEmbedded()
	}()
	select {
	case <-done:
	case <-ctx.Done():
		c.log.Warn("the embedded NATS server is still shutting down at the deadline; not waiting for it")
	}
}

// shutdownEmbedded stops the embedded server and releases its store, once.
func (c *Conn) shutdownEmbedded() {
	c.embeddedStop.Do(func() {
		if c.embedded != nil {
			c.embedded.Shutdown()
			c.embedded.WaitForShutdown()
		}
		if c.storeRelease != nil {
			c.storeRelease()
		}
	})
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

// RedactServers hides credentials embedded in server URLs (for logs and errors).
func RedactServers(servers []string) []string {
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
