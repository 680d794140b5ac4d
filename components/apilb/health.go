package apilb

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// checkLoop checks every backend (the seeds, the learnt, and the retired
// that still carry connections) every CheckInterval, each in its own
// goroutine: one slow to answer delays no other.
func (lb *LB) checkLoop(ctx context.Context) {
	t := time.NewTicker(lb.o.CheckInterval)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		lb.mu.Lock()
		for _, b := range lb.backends {
			if b.checking {
				continue
			}
			b.checking = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := lb.probe(ctx, b.addr)
				lb.mu.Lock()
				defer lb.mu.Unlock()
				b.checking = false
				if ctx.Err() == nil {
					lb.record(b, err)
				}
			}()
		}
		lb.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe is one health check: a TCP connect, and with CheckTLS a TLS
// handshake, each within CheckTimeout. Nothing is sent past the
// handshake, so the server's certificate is not verified here: the
// clients verify it on their own connections.
func (lb *LB) probe(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: lb.o.CheckTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if !lb.o.CheckTLS {
		return nil
	}
	c.SetDeadline(time.Now().Add(lb.o.CheckTimeout))
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	// A close_notify: the server sees an orderly end, not an error.
	return tc.Close()
}

// record takes the result of a check (or of a client's dial) into b's
// state, and logs a change. Going down closes every connection proxied to
// b, so its clients reconnect, through a backend that is up. Called with
// mu held.
func (lb *LB) record(b *backend, err error) {
	if err == nil {
		b.fails = 0
		if !b.up || !b.checked {
			lb.logf("backend %s up", b.addr)
		}
		b.up, b.checked = true, true
		return
	}
	b.fails++
	if b.checked && (!b.up || (b.fails < downAfter && !errors.Is(err, syscall.ECONNREFUSED))) {
		return
	}
	b.up, b.checked = false, true
	n := len(b.conns)
	for p := range b.conns {
		p.close()
	}
	lb.logf("backend %s down: %v; closed the %d connections through it", b.addr, err, n)
}
