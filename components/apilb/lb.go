// Package apilb is a worker's node-local load balancer in front of the
// cluster's API servers: a TCP proxy (TLS passes through untouched) on
// 127.0.0.1:6444 that the worker's kubelet, kube-proxy, pod network and
// join reach the API at. With several masters, a worker whose API server
// dies keeps working: new connections go to the others, and the
// connections to the dead one are closed at once, so the clients (the
// kubelet's watches) reconnect through a live master instead of waiting
// minutes for TCP to give up on the dead peer.
//
// The clients' TLS is end to end: they verify the API server's certificate
// as before (it carries 127.0.0.1). The balancer learns the masters from
// the cluster (health.go, learn.go); it links no Kubernetes code.
package apilb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configure an LB. Zero timings are the defaults below.
type Options struct {
	// Listen is the address the clients connect to, e.g. 127.0.0.1:6444.
	Listen string
	// Seeds are API servers (HOST:PORT) known from the node config: the
	// backends until the cluster's own list is learnt, and the fallback
	// while every learnt one is down.
	Seeds []string
	// Kubeconfig is the node's kubeconfig, the credentials the masters are
	// learnt with (learn.go). It need not exist yet (before the join):
	// until it does, the seeds are the backends.
	Kubeconfig string
	// ClientCert is a PEM file with a client certificate and its key
	// (the kubelet's kubelet-client-current.pem), used instead of the
	// kubeconfig's when it exists: the kubelet rotates it, the kubeconfig's
	// is the one the join got.
	ClientCert string
	// CheckTLS makes a health check complete a TLS handshake after the TCP
	// connect: a wedged API server may still accept connections, and an
	// API server counts (and at -v=5 logs) a connection closed before
	// its handshake as a handshake error.
	CheckTLS bool

	CheckInterval time.Duration // between health checks of a backend
	CheckTimeout  time.Duration // for the connect, and again for the handshake
	DialTimeout   time.Duration // for a client's connection to a backend
	LearnInterval time.Duration // between readings of the masters' list
	// Log gets one line per backend going up or down and per change of
	// the backend set (standard error when nil).
	Log io.Writer
}

// The defaults: a backend that stops answering is found within a few
// seconds, and its connections closed then.
const (
	defaultCheckInterval = 2 * time.Second
	defaultCheckTimeout  = time.Second
	defaultDialTimeout   = 2 * time.Second
	defaultLearnInterval = 10 * time.Second
)

// downAfter is how many failed checks in a row take a backend down that
// was up. A refused connection takes it down at once: the host answered
// that nothing listens. A timeout may be one lost packet, and going down
// closes every connection through that backend.
const downAfter = 2

// firstReadTimeout bounds the wait for a client's first bytes (API
// clients speak first: a TLS ClientHello).
const firstReadTimeout = time.Minute

// failLogEvery bounds the lines about clients no backend took.
const failLogEvery = 30 * time.Second

// LB is the load balancer. Listen makes one; Run serves it.
type LB struct {
	o  Options
	ln net.Listener

	mu       sync.Mutex
	backends map[string]*backend // the seeds, the learnt, and the retired that still carry connections
	seeds    []string
	learned  []string // empty until learnt
	next     int      // round robin among equals
	lastFail time.Time
	closed   bool // Run has returned: a connection made since is closed at once
}

// backend is one API server and the connections proxied to it.
type backend struct {
	addr     string
	up       bool // unknown (checked is false) counts as up
	checked  bool // a check has decided up or down
	fails    int  // failed checks in a row
	checking bool
	conns    map[*pair]struct{}
}

func newBackend(addr string) *backend {
	return &backend{addr: addr, up: true, conns: map[*pair]struct{}{}}
}

// Listen validates o and binds o.Listen. The listener is the LB's until
// Run returns.
func Listen(o Options) (*LB, error) {
	if len(o.Seeds) == 0 {
		return nil, errors.New("api-lb: no API server to start with: give at least one seed HOST:PORT")
	}
	for _, s := range o.Seeds {
		if err := checkHostPort(s); err != nil {
			return nil, fmt.Errorf("api-lb: seed %q: %v (want HOST:PORT)", s, err)
		}
	}
	o.CheckInterval = orDefault(o.CheckInterval, defaultCheckInterval)
	o.CheckTimeout = orDefault(o.CheckTimeout, defaultCheckTimeout)
	o.DialTimeout = orDefault(o.DialTimeout, defaultDialTimeout)
	o.LearnInterval = orDefault(o.LearnInterval, defaultLearnInterval)
	if o.Log == nil {
		o.Log = os.Stderr
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("api-lb: %w", err)
	}
	lb := &LB{o: o, ln: ln, backends: map[string]*backend{}, seeds: dedupe(o.Seeds)}
	for _, s := range lb.seeds {
		lb.backends[s] = newBackend(s)
	}
	return lb, nil
}

// Addr is the address the LB listens on.
func (lb *LB) Addr() net.Addr { return lb.ln.Addr() }

// Run serves until ctx ends, then closes the listener and every proxied
// connection.
func (lb *LB) Run(ctx context.Context) error {
	lb.logf("listening on %s, seeds %s", lb.ln.Addr(), strings.Join(lb.seeds, ", "))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); lb.checkLoop(ctx) }()
	go func() { defer wg.Done(); lb.learnLoop(ctx) }()
	go func() { <-ctx.Done(); lb.ln.Close() }()
	var err error
	for {
		c, aerr := lb.ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("api-lb: accepting: %w", aerr)
			}
			break
		}
		go lb.handle(c)
	}
	cancel()
	lb.mu.Lock()
	lb.closed = true
	for _, b := range lb.backends {
		for p := range b.conns {
			p.close()
		}
	}
	lb.mu.Unlock()
	wg.Wait()
	return err
}

// Backends are the backends new connections go to (the learnt ones, else
// the seeds), each with whether it is up.
func (lb *LB) Backends() map[string]bool {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	out := map[string]bool{}
	for _, a := range lb.active() {
		out[a] = lb.backends[a].up
	}
	return out
}

// active are the backends new connections prefer. Called with mu held.
func (lb *LB) active() []string {
	if len(lb.learned) > 0 {
		return lb.learned
	}
	return lb.seeds
}

// handle proxies one client. It dials only once the client has spoken, so
// a connect-and-close (the node's readiness probe) costs the API servers
// nothing; then it tries the candidates in order until one takes the
// connection.
func (lb *LB) handle(client net.Conn) {
	defer client.Close()
	buf := make([]byte, 16<<10)
	client.SetReadDeadline(time.Now().Add(firstReadTimeout))
	n, err := client.Read(buf)
	if n == 0 {
		return // closed (or silent) before saying anything
	}
	client.SetReadDeadline(time.Time{})
	first := buf[:n]
	var tried []string
	for _, b := range lb.candidates() {
		server, derr := net.DialTimeout("tcp", b.addr, lb.o.DialTimeout)
		if derr != nil {
			tried = append(tried, fmt.Sprintf("%s (%v)", b.addr, derr))
			lb.mu.Lock()
			lb.record(b, derr)
			lb.mu.Unlock()
			continue
		}
		if _, werr := server.Write(first); werr != nil {
			server.Close()
			tried = append(tried, fmt.Sprintf("%s (%v)", b.addr, werr))
			continue
		}
		p := &pair{client: client, server: server}
		lb.attach(b, p)
		p.pipe(err != nil)
		lb.detach(p)
		return
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if now := time.Now(); now.Sub(lb.lastFail) >= failLogEvery {
		lb.lastFail = now
		lb.logf("no API server took a client's connection: tried %s (are the masters up?)", strings.Join(tried, ", "))
	}
}

// candidates are the backends to try for a new connection, best first:
// the active ones that are up, fewest connections first and round robin
// among equals; if none is up, the seeds that are up; then every other
// one, down or not, for a backend that has just come back is better than
// refusing the client.
func (lb *LB) candidates() []*backend {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	var all []*backend
	for _, a := range dedupe(append(slices.Clone(lb.active()), lb.seeds...)) {
		all = append(all, lb.backends[a])
	}
	if len(all) == 0 {
		return nil
	}
	lb.next++
	k := lb.next % len(all)
	all = slices.Concat(all[k:], all[:k])
	activeUp := func(b *backend) bool { return b.up && slices.Contains(lb.active(), b.addr) }
	rank := func(b *backend) int {
		switch {
		case activeUp(b):
			return 0
		case b.up:
			return 1
		}
		return 2
	}
	slices.SortStableFunc(all, func(x, y *backend) int {
		if r := rank(x) - rank(y); r != 0 {
			return r
		}
		if rank(x) == 2 {
			return 0
		}
		return len(x.conns) - len(y.conns)
	})
	return all
}

// attach counts p as a connection of b; b is kept (retired) while it
// carries one, even if it has left the set meanwhile.
func (lb *LB) attach(b *backend, p *pair) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if cur, ok := lb.backends[b.addr]; ok && cur != b {
		b = cur
	}
	lb.backends[b.addr] = b
	b.conns[p] = struct{}{}
	p.b = b
	if lb.closed {
		p.close()
	}
}

func (lb *LB) detach(p *pair) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	delete(p.b.conns, p)
	lb.prune()
}

// prune forgets the backends that are neither seeds nor learnt and carry
// no connection. Called with mu held.
func (lb *LB) prune() {
	for a, b := range lb.backends {
		if len(b.conns) == 0 && !slices.Contains(lb.seeds, a) && !slices.Contains(lb.learned, a) {
			delete(lb.backends, a)
		}
	}
}

// setLearned replaces the learnt backends (none: keep the current ones).
// The connections to a backend that left stay: it has not failed, and
// it is checked (and its connections closed if it goes down) until its
// last one ends.
func (lb *LB) setLearned(addrs []string) {
	addrs = dedupe(addrs)
	slices.Sort(addrs)
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if len(addrs) == 0 || slices.Equal(addrs, lb.learned) {
		return
	}
	lb.learned = addrs
	for _, a := range addrs {
		if lb.backends[a] == nil {
			lb.backends[a] = newBackend(a)
		}
	}
	lb.prune()
	lb.logf("backends %s (learnt from the cluster; the seeds %s are the fallback)", strings.Join(addrs, ", "), strings.Join(lb.seeds, ", "))
}

func (lb *LB) logf(format string, args ...any) {
	fmt.Fprintf(lb.o.Log, "api-lb: "+format+"\n", args...)
}

// pair is a client connection and its backend connection.
type pair struct {
	client, server net.Conn
	b              *backend // set by attach, under mu
	once           sync.Once
}

// pipe copies both ways until both are done. A side that ends its
// sending (EOF) has it passed on as a half-close, the other direction
// goes on. clientDone says the client has already ended its sending.
func (p *pair) pipe(clientDone bool) {
	done := make(chan struct{})
	go func() {
		if !clientDone {
			io.Copy(p.server, p.client)
		}
		closeWrite(p.server)
		close(done)
	}()
	io.Copy(p.client, p.server)
	closeWrite(p.client)
	<-done
	p.close()
}

// close ends both connections (a backend gone down): both copies end.
func (p *pair) close() {
	p.once.Do(func() {
		p.client.Close()
		p.server.Close()
	})
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q is not 1-65535", port)
	}
	return nil
}

func dedupe(s []string) []string {
	var out []string
	for _, x := range s {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
