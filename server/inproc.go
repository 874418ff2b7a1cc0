package server

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/kgents/kgents-go/interceptors"
)

// inprocListener hands the gRPC server connections that the REST gateway
// dials inside the process. Each connection is a kernel socketpair: no port,
// nothing another host (or process) can reach, and a peer address
// (interceptors.GatewayAddr) that native gRPC clients cannot present, which
// is how the interceptors know a call came from the gateway and may trust
// its route metadata. The gateway keeps one HTTP/2 connection and the gRPC
// server caps no streams on it, so SSE watchers are not throttled.
type inprocListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newInprocListener() *inprocListener {
	return &inprocListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

var errListenerClosed = errors.New("in-process listener closed")

// Accept waits for the next dialled connection.
func (l *inprocListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting.
func (l *inprocListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is the gateway address.
func (l *inprocListener) Addr() net.Addr { return interceptors.GatewayAddr{} }

// Dial opens a connection to the server side.
func (l *inprocListener) Dial(ctx context.Context) (net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, err
	}
	client, err := fdConn(fds[0], "gateway-client")
	if err != nil {
		_ = syscall.Close(fds[1])
		return nil, err
	}
	srv, err := fdConn(fds[1], "gateway-server")
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	select {
	case l.conns <- &gatewayConn{Conn: srv}:
		return client, nil
	case <-l.closed:
	case <-ctx.Done():
	}
	_ = client.Close()
	_ = srv.Close()
	return nil, errListenerClosed
}

func fdConn(fd int, name string) (net.Conn, error) {
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), name)
	defer func() { _ = f.Close() }() // FileConn dups the descriptor
	return net.FileConn(f)
}

// gatewayConn is the server side of a gateway connection.
type gatewayConn struct{ net.Conn }

func (c *gatewayConn) RemoteAddr() net.Addr { return interceptors.GatewayAddr{} }
func (c *gatewayConn) LocalAddr() net.Addr  { return interceptors.GatewayAddr{} }
