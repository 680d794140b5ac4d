// Package netns gives tests network namespaces of their own, and the links
// in them: veth pairs, bridges, taps and addresses, made over netlink
// (github.com/vishvananda/netlink), never on the host's interfaces. Each
// namespace is named, so a process started with "ip netns exec NAME" (QEMU,
// dnsmasq, a server under test) runs in it, and it is deleted when the test
// ends.
//
// Everything here needs root; New skips the test when it is not.
package netns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// bindMountPath is where named namespaces are, for ip netns and
// vishvananda/netns alike.
const bindMountPath = "/run/netns"

// NS is a named network namespace a test made.
type NS struct {
	Name string
	h    vnetns.NsHandle
	nl   *netlink.Handle
}

// New makes a network namespace with the name, its loopback up, and
// deletes it when the test ends. A leftover of the same name (from a
// killed run) is deleted first. It skips the test when not run as root.
func New(t testing.TB, name string) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	// A leftover of a killed run: unmounted and removed, as ip netns del.
	leftover := filepath.Join(bindMountPath, name)
	_ = unix.Unmount(leftover, unix.MNT_DETACH) // not a mount, or not there: os.Remove says which
	if err := os.Remove(leftover); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("deleting the leftover network namespace %s: %v", name, err)
	}
	var h vnetns.NsHandle
	err := onOwnThread(func() error {
		var err error
		// NewNamed also moves the calling thread into the namespace:
		// onOwnThread discards that thread.
		h, err = vnetns.NewNamed(name)
		return err
	})
	if err != nil {
		t.Fatalf("network namespace %s: %v", name, err)
	}
	ns := &NS{Name: name, h: h}
	t.Cleanup(func() {
		if ns.nl != nil {
			ns.nl.Close()
		}
		ns.h.Close()
		if err := vnetns.DeleteNamed(name); err != nil {
			t.Errorf("deleting network namespace %s: %v", name, err)
		}
	})
	if ns.nl, err = netlink.NewHandleAt(h); err != nil {
		t.Fatalf("netlink in %s: %v", name, err)
	}
	ns.Up(t, "lo")
	return ns
}

// onOwnThread runs fn on a thread of its own, which is never given back
// to the Go scheduler: it ends with the goroutine, so whatever namespace fn
// moved it into nothing else ever runs there by accident.
func onOwnThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- fn()
	}()
	return <-errc
}

// Do runs fn on a thread inside the namespace. Sockets fn makes stay in
// it, and can be used from any goroutine after fn returns.
func (ns *NS) Do(fn func() error) error {
	return onOwnThread(func() error {
		if err := vnetns.Set(ns.h); err != nil {
			return fmt.Errorf("entering network namespace %s: %w", ns.Name, err)
		}
		return fn()
	})
}

// Prefix is the command that runs another in the namespace:
// ip netns exec NAME.
func (ns *NS) Prefix() []string { return []string{"ip", "netns", "exec", ns.Name} }

// Command is exec.Command run inside the namespace (by ip netns exec), for
// programs that must live in it, such as servers.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	p := ns.Prefix()
	return exec.Command(p[0], append(append(p[1:], name), args...)...)
}

// CommandContext is exec.CommandContext run inside the namespace.
func (ns *NS) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	p := ns.Prefix()
	return exec.CommandContext(ctx, p[0], append(append(p[1:], name), args...)...)
}

func (ns *NS) link(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := ns.nl.LinkByName(name)
	if err != nil {
		t.Fatalf("%s in %s: %v", name, ns.Name, err)
	}
	return l
}

// Veth makes a veth pair: name in this namespace, its peer peerName in
// peer's. The pair never exists in the host's namespace. Both stay down.
func (ns *NS) Veth(t testing.TB, name string, peer *NS, peerName string) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peerName, PeerNamespace: netlink.NsFd(peer.h)}
	if err := ns.nl.LinkAdd(v); err != nil {
		t.Fatalf("veth %s (%s) - %s (%s): %v", name, ns.Name, peerName, peer.Name, err)
	}
}

// Bridge makes a bridge, down.
func (ns *NS) Bridge(t testing.TB, name string) {
	t.Helper()
	if err := ns.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("bridge %s in %s: %v", name, ns.Name, err)
	}
}

// Tap makes a persistent tap device, down, as "ip tuntap add NAME mode
// tap" does: no packet information header, single queue, for QEMU to open
// by name.
func (ns *NS) Tap(t testing.TB, name string) {
	t.Helper()
	// The tun device is made in the namespace of the thread that opens
	// /dev/net/tun, not through the netlink socket: do it from inside.
	err := ns.Do(func() error {
		return netlink.LinkAdd(&netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI,
			// netlink always sets an owner: root (Owner and Group 0), who
			// runs QEMU in these tests.
		})
	})
	if err != nil {
		t.Fatalf("tap %s in %s: %v", name, ns.Name, err)
	}
}

// Master puts a link on a bridge.
func (ns *NS) Master(t testing.TB, name, bridge string) {
	t.Helper()
	br, ok := ns.link(t, bridge).(*netlink.Bridge)
	if !ok {
		t.Fatalf("%s in %s is not a bridge", bridge, ns.Name)
	}
	if err := ns.nl.LinkSetMaster(ns.link(t, name), br); err != nil {
		t.Fatalf("%s onto bridge %s in %s: %v", name, bridge, ns.Name, err)
	}
}

// Addr gives a link an address, in CIDR form (10.77.0.1/24).
func (ns *NS) Addr(t testing.TB, name, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.nl.AddrAdd(ns.link(t, name), a); err != nil {
		t.Fatalf("address %s on %s in %s: %v", cidr, name, ns.Name, err)
	}
}

// Up brings links up.
func (ns *NS) Up(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := ns.nl.LinkSetUp(ns.link(t, n)); err != nil {
			t.Fatalf("%s up in %s: %v", n, ns.Name, err)
		}
	}
}
