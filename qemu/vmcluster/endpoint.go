package vmcluster

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// endpoint is the host's API address of a cluster with several masters:
// a TCP relay on 127.0.0.1 (TLS passes through; the API servers'
// certificates name 127.0.0.1) that hands each connection to a master
// whose forwarded port answers, and closes a master's connections the
// moment its VM stops, so clients reconnect to another at once instead of
// waiting on a dead peer. It is what an external load balancer is for a
// cluster on a real network. With a virtual IP (Options.VIP) it stands
// for it: the host cannot reach the cluster's L2, so it sends each
// connection to the master that holds the VIP (as its node API said at
// the last look), as the L2 would; the others only while no holder is
// known or the holder does not answer.
type endpoint struct {
	port     int
	ln       net.Listener
	backends func() []backend

	mu    sync.Mutex
	next  int
	conns map[net.Conn]struct{}
}

// backend is one master's forwarded API port; gone is closed when its VM
// stops; vip says it holds the virtual IP.
type backend struct {
	name, addr string
	gone       <-chan struct{}
	vip        bool
}

func newEndpoint(port int, backends func() []backend) (*endpoint, error) {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, fmt.Errorf("API port 127.0.0.1:%d: %w", port, err)
	}
	e := &endpoint{port: ln.Addr().(*net.TCPAddr).Port, ln: ln, backends: backends, conns: map[net.Conn]struct{}{}}
	go e.serve()
	return e, nil
}

func (e *endpoint) serve() {
	for {
		c, err := e.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go e.relay(c)
	}
}

// relay dials the masters in turn (the VIP's holder first), starting
// after the last one used, and copies both ways until either side closes
// or the master's VM stops.
func (e *endpoint) relay(c net.Conn) {
	defer c.Close()
	bs := e.backends()
	if len(bs) == 0 {
		return
	}
	e.mu.Lock()
	start := e.next
	e.next++
	e.mu.Unlock()
	for _, b := range order(bs, start) {
		select {
		case <-b.gone:
			continue
		default:
		}
		up, err := net.DialTimeout("tcp", b.addr, 2*time.Second)
		if err != nil {
			continue
		}
		e.track(c, up, true)
		done := make(chan struct{})
		go func() {
			select {
			case <-b.gone:
			case <-done:
			}
			c.Close()
			up.Close()
		}()
		go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
		io.Copy(c, up)
		close(done)
		e.track(c, up, false)
		return
	}
}

// order is the backends to try, round robin from start, the VIP's
// holders first.
func order(bs []backend, start int) []backend {
	var holders, others []backend
	for i := range bs {
		b := bs[(start+i)%len(bs)]
		if b.vip {
			holders = append(holders, b)
		} else {
			others = append(others, b)
		}
	}
	return append(holders, others...)
}

func (e *endpoint) track(c, up net.Conn, add bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if add {
		e.conns[c], e.conns[up] = struct{}{}, struct{}{}
		return
	}
	delete(e.conns, c)
	delete(e.conns, up)
}

// Close stops listening and closes every relayed connection.
func (e *endpoint) Close() {
	e.ln.Close()
	e.mu.Lock()
	defer e.mu.Unlock()
	for c := range e.conns {
		c.Close()
	}
}
