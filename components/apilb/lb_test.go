package apilb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"kiln/internal/testutil"
)

// fast are timings that make a test of seconds.
func fast(o Options) Options {
	o.Listen = "127.0.0.1:0"
	o.CheckInterval = 100 * time.Millisecond
	o.CheckTimeout = 300 * time.Millisecond
	o.DialTimeout = 500 * time.Millisecond
	o.LearnInterval = 100 * time.Millisecond
	return o
}

// run starts an LB and stops it at the test's end.
func run(t *testing.T, o Options) (*LB, *testutil.SyncBuffer) {
	t.Helper()
	log := &testutil.SyncBuffer{}
	o.Log = log
	lb, err := Listen(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lb.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("LB log:\n%s", log)
		}
	})
	return lb, log
}

// echo is a backend: to each connection it says its name on a line, then
// echoes lines. Stop makes it stop listening while the connections it
// has stay open and silent, as a machine that died would leave them.
type echo struct {
	name string
	ln   net.Listener
	dead atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
}

func startEcho(t *testing.T, name, addr string) *echo {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &echo{name: name, ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns = append(e.conns, c)
			e.mu.Unlock()
			go func() {
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if e.dead.Load() {
						continue // dead: nothing comes back
					}
					fmt.Fprintf(c, "%s %s", e.name, line)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, c := range e.conns {
			c.Close()
		}
	})
	return e
}

func (e *echo) addr() string { return e.ln.Addr().String() }

func (e *echo) stop() {
	e.dead.Store(true)
	e.ln.Close()
}

// client is a connection through the LB and the backend that answered it.
type client struct {
	net.Conn
	r       *bufio.Reader
	backend string
}

// dial connects through the LB and says hello: the answer names the
// backend.
func dial(t *testing.T, lb *LB) *client {
	t.Helper()
	c, err := net.Dial("tcp", lb.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &client{Conn: c, r: bufio.NewReader(c)}
	name, err := cl.say("hello")
	if err != nil {
		t.Fatalf("through the LB: %v", err)
	}
	cl.backend = name
	return cl
}

// say sends a line and returns the name of the backend that echoed it.
func (c *client) say(s string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, s); err != nil {
		return "", err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	name, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	if rest != s {
		return "", fmt.Errorf("echo %q, want %q", rest, s)
	}
	return name, nil
}

func TestSpreadsOverBackends(t *testing.T) {
	a, b := startEcho(t, "a", "127.0.0.1:0"), startEcho(t, "b", "127.0.0.1:0")
	lb, _ := run(t, fast(Options{Seeds: []string{a.addr(), b.addr()}}))
	count := map[string]int{}
	for range 10 {
		count[dial(t, lb).backend]++
	}
	if count["a"] != 5 || count["b"] != 5 {
		t.Errorf("10 connections held open went %v, want 5 to each (fewest connections first)", count)
	}
}

// A backend that stops answering gets no new connection, and the ones it
// had are closed within a few seconds; the others' are left alone.
func TestDeadBackendsConnectionsAreClosed(t *testing.T) {
	a, b := startEcho(t, "a", "127.0.0.1:0"), startEcho(t, "b", "127.0.0.1:0")
	lb, log := run(t, fast(Options{Seeds: []string{a.addr(), b.addr()}}))
	var toA, toB []*client
	for range 4 {
		c := dial(t, lb)
		if c.backend == "a" {
			toA = append(toA, c)
		} else {
			toB = append(toB, c)
		}
	}
	if len(toA) == 0 || len(toB) == 0 {
		t.Fatalf("connections went %d to a, %d to b", len(toA), len(toB))
	}
	start := time.Now()
	a.stop()
	for _, c := range toA {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a connection through the dead backend still open after %s: %v", time.Since(start), err)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("connections through the dead backend closed after %s, want within a few seconds", d)
	}
	for _, c := range toB {
		if _, err := c.say("still there"); err != nil {
			t.Errorf("a connection through the live backend: %v", err)
		}
	}
	for range 4 {
		if c := dial(t, lb); c.backend != "b" {
			t.Errorf("a new connection went to %s, which is down", c.backend)
		}
	}
	if up := lb.Backends(); up[a.addr()] || !up[b.addr()] {
		t.Errorf("backends %v, want a down and b up", up)
	}
	if !strings.Contains(log.String(), "backend "+a.addr()+" down") {
		t.Errorf("no line says a went down:\n%s", log)
	}
}

// With every backend down, a client is still tried on each: one that has
// just come back takes it before any check has seen it up.
func TestAllDownStillTries(t *testing.T) {
	gone, back := reserve(t), reserve(t)
	o := fast(Options{Seeds: []string{gone, back}})
	o.CheckInterval = time.Hour // the first check only, at start
	lb, _ := run(t, o)
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, "both backends down", testutil.Until("both down", func() bool {
		up := lb.Backends()
		return len(up) == 2 && !up[gone] && !up[back]
	}))
	startEcho(t, "back", back)
	for range 3 {
		if c := dial(t, lb); c.backend != "back" {
			t.Errorf("answered by %s", c.backend)
		}
	}
}

// reserve returns a loopback address nothing listens on (now).
func reserve(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// A connection closed before it says anything (the node's readiness
// probe) is never passed on.
func TestSilentClientIsNotProxied(t *testing.T) {
	a := startEcho(t, "a", "127.0.0.1:0")
	o := fast(Options{Seeds: []string{a.addr()}})
	o.CheckInterval = time.Hour // one check, at start
	lb, log := run(t, o)
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, "the first check", testutil.Until("a checked", func() bool {
		return strings.Contains(log.String(), "backend "+a.addr()+" up")
	}))
	for range 3 {
		c, err := net.Dial("tcp", lb.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	a.mu.Lock()
	n := len(a.conns)
	a.mu.Unlock()
	if n != 1 {
		t.Errorf("the backend had %d connections, want 1 (the health check's): silent clients were passed on", n)
	}
	if c := dial(t, lb); c.backend != "a" {
		t.Errorf("answered by %s", c.backend)
	}
}

// A timeout may be one lost packet: a backend goes down on the second in a
// row, or on the first refusal; one success brings it back.
func TestDownAfter(t *testing.T) {
	lb := &LB{o: Options{Log: io.Discard}, backends: map[string]*backend{}}
	b := newBackend("192.0.2.1:6443")
	timeout := &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}
	refused := &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	lb.record(b, nil)
	lb.record(b, timeout)
	if !b.up {
		t.Fatal("down after one timeout")
	}
	lb.record(b, timeout)
	if b.up {
		t.Fatal("up after two timeouts in a row")
	}
	lb.record(b, nil)
	if !b.up {
		t.Fatal("down after a success")
	}
	lb.record(b, refused)
	if b.up {
		t.Fatal("up after a refusal")
	}
	c := newBackend("192.0.2.2:6443")
	lb.record(c, timeout)
	if c.up {
		t.Error("a backend never seen up stays up after a failed first check")
	}
}

// Half-close: a client that ends its sending still gets the answer.
func TestHalfClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Answers what it got once the sender is done (the health checks'
	// connections get an answer to nothing).
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var got []byte
				buf := make([]byte, 1024)
				for {
					n, err := c.Read(buf)
					got = append(got, buf[:n]...)
					if err != nil {
						break // EOF: the client is done sending
					}
				}
				fmt.Fprintf(c, "got %q", got)
			}()
		}
	}()
	lb, _ := run(t, fast(Options{Seeds: []string{ln.Addr().String()}}))
	c, err := net.Dial("tcp", lb.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("question"))
	c.(*net.TCPConn).CloseWrite()
	var answer []byte
	buf := make([]byte, 1024)
	for {
		n, err := c.Read(buf)
		answer = append(answer, buf[:n]...)
		if err != nil {
			break
		}
	}
	if string(answer) != `got "question"` {
		t.Errorf("answer %q", answer)
	}
}

func TestListenChecksSeeds(t *testing.T) {
	for _, seeds := range [][]string{nil, {"10.0.0.1"}, {"10.0.0.1:0"}, {":6443"}} {
		if lb, err := Listen(Options{Listen: "127.0.0.1:0", Seeds: seeds}); err == nil {
			lb.ln.Close()
			t.Errorf("seeds %q accepted", seeds)
		}
	}
}
