package streaming

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// dial opens another connection to the NATS that c is connected to — same
// servers, credentials, TLS, reconnect policy and (embedded mode) in-process
// server — with extra options applied last (they replace c's callbacks).
// The caller owns the returned connection.
//
// The Publisher uses its own connection for one reason: it must turn off
// nats.go's reconnect buffer (ReconnectBufSize -1), which c keeps at 8 MiB
// for everyone else. With the buffer on, a publish that races a disconnect
// lands in that buffer and is re-sent by nats.go during the reconnect
// handshake — before the publisher can replay the older messages that were
// lost with the connection — so it would be stored ahead of them. With the
// buffer off, such a publish fails at once (ErrReconnectBufExceeded) and
// goes to the spool, behind the older ones.
func (c *Conn) dial(extra ...nats.Option) (*nats.Conn, error) {
	if c == nil || c.nc == nil {
		return nil, errors.New("nats: disabled")
	}
	o := c.nc.Opts // a copy; Connect filled in defaults, dialer, TLS, servers
	o.ConnectedCB, o.ReconnectedCB, o.ClosedCB = nil, nil, nil
	o.DisconnectedCB, o.DisconnectedErrCB, o.DiscoveredServersCB = nil, nil, nil
	for _, opt := range extra {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	return o.Connect()
}

// link is what the publisher tracks about its connection besides nc
// itself: atomics, read without any lock.
type link struct {
	// epoch is bumped on every disconnect (under Publisher.mu, in the step
	// that switches to the spool). A publish sent in an older epoch that
	// fails is a disconnect, not a JetStream failure.
	epoch        atomic.Uint64
	wasDown      atomic.Bool // disconnected since the last connect
	incompatible atomic.Bool // the connected server is older than MinServerVersion
}

// connected reports whether the publisher's connection is up (and the
// server recent enough).
func (p *Publisher) connected() bool {
	// The live version too: the connect callback (checkVersion) may not
	// have run yet for a connection that has just come up.
	return p.nc.IsConnected() && !p.link.incompatible.Load() && serverVersionOK(p.nc.ConnectedServerVersion())
}

func (p *Publisher) checkVersion() {
	v := p.nc.ConnectedServerVersion()
	p.link.incompatible.Store(v != "" && !versionAtLeast(v, MinServerVersion))
}

// ---- connection and breaker events ----

func (p *Publisher) onDisconnect() {
	<-p.ready
	p.mu.Lock()
	if p.sp == nil || p.stopped {
		p.mu.Unlock()
		return
	}
	p.link.epoch.Add(1)
	p.switchToSpoolLocked("nats disconnected")
	p.mu.Unlock()
	p.link.wasDown.Store(true)
	wake(p.health.wake)
}

func (p *Publisher) onConnect() {
	<-p.ready
	if p.sp == nil {
		return // NewPublisher failed
	}
	select {
	case <-p.stop:
		return
	default:
	}
	p.checkVersion()
	if p.link.wasDown.Swap(false) {
		// SPEC §4.9: a reconnect moves the breaker straight to half-open.
		p.br.reconnect()
	}
	wake(p.replay.wake)
	wake(p.direct.wake)
	wake(p.health.wake)
}

// breakerChanged runs under the breaker's lock: no blocking, no publisher lock.
func (p *Publisher) breakerChanged(from, to breakerState) {
	p.met.circuit.Set(stateGauge(to))
	p.log.Info("nats publish circuit breaker", "from", stateName(from), "to", stateName(to))
	if to == stateOpen {
		time.AfterFunc(p.o.BreakerOpen+5*time.Millisecond, func() {
			_ = p.br.state() // moves it to half-open
			wake(p.replay.wake)
			wake(p.direct.wake)
		})
	}
	wake(p.replay.wake)
	wake(p.health.wake)
}
