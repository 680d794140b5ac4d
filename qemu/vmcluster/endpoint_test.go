package vmcluster

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// echoServer answers each line with its name and the line.
func echoServer(t *testing.T, name string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%s %s", name, l)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestEndpointFailsOver(t *testing.T) {
	var mu sync.Mutex
	goneA := make(chan struct{})
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close() // a master whose QEMU is gone: refused
	bs := []backend{
		{name: "a", addr: echoServer(t, "a"), gone: goneA},
		{name: "dead", addr: deadAddr, gone: make(chan struct{})},
		{name: "b", addr: echoServer(t, "b"), gone: make(chan struct{})},
	}
	e, err := newEndpoint(0, func() []backend { mu.Lock(); defer mu.Unlock(); return bs })
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ask := func(c net.Conn) (string, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "hi\n")
		return bufio.NewReader(c).ReadString('\n')
	}
	seen := map[string]bool{}
	var onA net.Conn
	for range 3 {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", e.port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got, err := ask(c)
		if err != nil {
			t.Fatal(err)
		}
		seen[got] = true
		if got == "a hi\n" {
			onA = c
		}
	}
	if !seen["a hi\n"] || !seen["b hi\n"] || len(seen) != 2 {
		t.Fatalf("answers %v: want a and b (the dead master skipped)", seen)
	}
	// a's VM stops: its connection is closed at once, new ones go to b.
	close(goneA)
	onA.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(onA).ReadString('\n'); err == nil || isTimeout(err) {
		t.Fatalf("a's connection after its VM stopped: %v, want closed", err)
	}
	for range 3 {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", e.port))
		if err != nil {
			t.Fatal(err)
		}
		got, err := ask(c)
		c.Close()
		if err != nil || got != "b hi\n" {
			t.Fatalf("after a stopped: %q, %v; want b", got, err)
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
