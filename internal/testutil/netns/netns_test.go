package netns

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

func name(s string) string { return fmt.Sprintf("kiln-t%d-%s", os.Getpid(), s) }

// TestNetwork wires two namespaces as the PXE tests do (a bridge with a
// tap and a veth whose peer is in the other namespace) and sends a packet
// across; the namespaces are gone after the test.
func TestNetwork(t *testing.T) {
	var a, b *NS
	t.Run("wire", func(t *testing.T) {
		a, b = New(t, name("a")), New(t, name("b"))
		a.Bridge(t, "br0")
		a.Addr(t, "br0", "10.99.0.1/24")
		a.Veth(t, "veth-a", b, "eth0")
		a.Master(t, "veth-a", "br0")
		a.Tap(t, "tap0")
		a.Master(t, "tap0", "br0")
		a.Up(t, "br0", "veth-a", "tap0")
		b.Addr(t, "eth0", "10.99.0.2/24")
		b.Up(t, "eth0")

		// A listener in A, a sender in B; sockets made in Do stay in
		// their namespace.
		var ln *net.UDPConn
		if err := a.Do(func() (err error) {
			ln, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 99, 0, 1), Port: 9999})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var c net.Conn
		if err := b.Do(func() (err error) {
			c, err = net.Dial("udp4", "10.99.0.1:9999")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		ln.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		n, from, err := ln.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "hello" || !strings.HasPrefix(from.String(), "10.99.0.2:") {
			t.Fatalf("across the veth: %q from %v, %v", buf[:n], from, err)
		}
		// The host's namespace has none of it.
		for _, l := range []string{"br0", "veth-a", "tap0"} {
			if _, err := net.InterfaceByName(l); err == nil {
				t.Errorf("%s exists in the host's namespace", l)
			}
		}
		if _, err := exec.LookPath("ip"); err == nil {
			out, err := a.Command("ip", "-o", "link", "show", "tap0").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "master br0") || !strings.Contains(string(out), "UP") {
				t.Errorf("ip netns exec %s ip link show tap0: %v\n%s", a.Name, err, out)
			}
		}
	})
	if a == nil {
		return // skipped
	}
	for _, ns := range []*NS{a, b} {
		if _, err := os.Stat(filepath.Join(bindMountPath, ns.Name)); err == nil {
			t.Errorf("%s is still there after the test", ns.Name)
		}
	}
}

// TestLeftover: a namespace of the same name from a killed run (made,
// never deleted) is replaced by a fresh one.
func TestLeftover(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	n := name("left")
	if err := onOwnThread(func() error {
		h, err := vnetns.NewNamed(n)
		if err != nil {
			return err
		}
		defer h.Close()
		return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-old"}})
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vnetns.DeleteNamed(n) }) // if New failed
	ns := New(t, n)
	if _, err := ns.nl.LinkByName("br-old"); err == nil {
		t.Error("the leftover namespace is still in use")
	}
}
