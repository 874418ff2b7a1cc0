package streaming

import (
	"errors"

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
