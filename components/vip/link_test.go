package vip

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"kiln/internal/testutil/netns"
)

func TestGratuitousARP(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x99, 0x00, 0x0b}
	got := GratuitousARP(mac, netip.MustParseAddr("10.120.0.5"))
	want := []byte{
		0, 1, 8, 0, 6, 4, 0, 1, // Ethernet, IPv4, 6 and 4 bytes, request
		0x52, 0x54, 0x00, 0x99, 0x00, 0x0b, 10, 120, 0, 5, // sender: the holder's MAC, the VIP
		0, 0, 0, 0, 0, 0, 10, 120, 0, 5, // target: unknown MAC, the VIP again
	}
	if !bytes.Equal(got, want) {
		t.Errorf("gratuitous ARP\n got % x\nwant % x", got, want)
	}
	if htons(0x0806) != binary.NativeEndian.Uint16([]byte{0x08, 0x06}) {
		t.Errorf("htons(0x0806) = %#x", htons(0x0806))
	}
}

// TestLinkInNamespaces: two "masters" and a "worker" on one bridge, each
// in a network namespace of its own. The first master adds the VIP and
// announces it; the worker sees the gratuitous ARP and reaches a server
// through the VIP. Then the VIP moves to the second master, whose
// announcement alone (no ARP timeout waited out) sends the worker's next
// connection there. Needs root.
func TestLinkInNamespaces(t *testing.T) {
	id := strconv.Itoa(os.Getpid() % 100000)
	lan := netns.New(t, "kvip-lan-"+id)
	a := netns.New(t, "kvip-a-"+id)
	b := netns.New(t, "kvip-b-"+id)
	w := netns.New(t, "kvip-w-"+id)
	lan.Bridge(t, "br0")
	lan.Up(t, "br0")
	for _, m := range []struct {
		ns        *netns.NS
		port, nic string
		nodeAddr  string
	}{{a, "pa", "a0", "10.77.0.1/24"}, {b, "pb", "b0", "10.77.0.2/24"}, {w, "pw", "w0", "10.77.0.3/24"}} {
		lan.Veth(t, m.port, m.ns, m.nic)
		lan.Master(t, m.port, "br0")
		lan.Up(t, m.port)
		m.ns.Addr(t, m.nic, m.nodeAddr)
		m.ns.Up(t, m.nic)
	}
	vip := netip.MustParseAddr("10.77.0.5")
	const port = "7443"
	serve(t, a, "a", port)
	serve(t, b, "b", port)

	do := func(ns *netns.NS, what string, fn func() error) {
		t.Helper()
		if err := ns.Do(fn); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	mac := func(ns *netns.NS, nic string) (m net.HardwareAddr) {
		do(ns, "MAC of "+nic, func() error {
			i, err := net.InterfaceByName(nic)
			if err == nil {
				m = i.HardwareAddr
			}
			return err
		})
		return m
	}
	macA, macB := mac(a, "a0"), mac(b, "b0")

	var onA, onB *Link
	do(a, "NewLink on a", func() (err error) { onA, err = NewLink(vip, netip.MustParseAddr("10.77.0.1")); return err })
	do(b, "NewLink on b", func() (err error) { onB, err = NewLink(vip, netip.MustParseAddr("10.77.0.2")); return err })
	if onA.String() != "10.77.0.5 on a0" {
		t.Errorf("String() = %q", onA.String())
	}
	do(a, "a: NewLink of an address on no network of the node", func() error {
		_, err := NewLink(netip.MustParseAddr("10.78.0.5"), netip.MustParseAddr("10.77.0.1"))
		if err == nil || !strings.Contains(err.Error(), "none of this node's networks (10.77.0.1/24)") {
			return fmt.Errorf("err = %v", err)
		}
		return nil
	})

	// The worker listens for ARP before the first master announces.
	var arpFD int
	do(w, "packet socket on w", func() (err error) {
		arpFD, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return err
		}
		return unix.SetsockoptTimeval(arpFD, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	})
	defer unix.Close(arpFD)

	do(a, "a takes the VIP", func() error {
		for range 2 { // adding again is no error
			if err := onA.Add(); err != nil {
				return err
			}
		}
		if held, err := onA.Held(); err != nil || !held {
			return fmt.Errorf("Held() = %t, %v after Add", held, err)
		}
		return onA.Announce()
	})
	want := GratuitousARP(macA, vip)
	deadline := time.Now().Add(3 * time.Second)
	for {
		buf := make([]byte, 128)
		n, _, err := unix.Recvfrom(arpFD, buf, 0)
		if err == nil && n >= arpLen && bytes.Equal(buf[:arpLen], want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker saw no gratuitous ARP from a (last: % x, %v)", buf[:max(n, 0)], err)
		}
	}
	if got := dial(t, w, vip, port); got != "a" {
		t.Fatalf("the worker reached %q through the VIP, want a", got)
	}

	// The VIP moves: a lets go, b takes it and announces it.
	do(a, "a lets go", func() error {
		for range 2 { // removing again is no error
			if err := onA.Remove(); err != nil {
				return err
			}
		}
		if held, err := onA.Held(); err != nil || held {
			return fmt.Errorf("Held() = %t, %v after Remove", held, err)
		}
		return nil
	})
	do(b, "b takes the VIP", func() error {
		if err := onB.Add(); err != nil {
			return err
		}
		return onB.Announce()
	})
	deadline = time.Now().Add(3 * time.Second)
	for {
		var got net.HardwareAddr
		do(w, "w's neighbours", func() error {
			l, err := netlink.LinkByName("w0")
			if err != nil {
				return err
			}
			ns, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
			for _, n := range ns {
				if n.IP.Equal(net.IP(vip.AsSlice())) {
					got = n.HardwareAddr
				}
			}
			return err
		})
		if bytes.Equal(got, macB) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker's neighbour entry for the VIP is %v after b's announcement, want b's %v (a's is %v)", got, macB, macA)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := dial(t, w, vip, port); got != "b" {
		t.Fatalf("the worker reached %q through the VIP after it moved, want b", got)
	}
	do(a, "Announce without the VIP", func() error {
		if err := onA.Announce(); err == nil {
			return fmt.Errorf("a announced a VIP it does not have")
		}
		return nil
	})
}

// serve answers every connection on port with name, from inside ns.
func serve(t *testing.T, ns *netns.NS, name, port string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", ":"+port); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, name)
			c.Close()
		}
	}()
}

// dial connects from inside ns and returns the server's name.
func dial(t *testing.T, ns *netns.NS, ip netip.Addr, port string) string {
	t.Helper()
	var got string
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp4", net.JoinHostPort(ip.String(), port), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		got, err = bufio.NewReader(c).ReadString('\n')
		got = strings.TrimSpace(got)
		return err
	})
	if err != nil {
		t.Fatalf("connecting to %s:%s: %v", ip, port, err)
	}
	return got
}
