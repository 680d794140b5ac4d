// Package netconf configures the node's network for PID 1: loopback, the
// main interface (static, or DHCP with a lease kept in the background),
// the additional interfaces, resolv.conf and the hosts files, and the route
// the node's own traffic to the cluster's Services needs on a network
// without a default route (svcroute.go). It turns the config's network
// section and DHCP answers into plans (Plan) and applies them with
// netlink; it knows nothing of the boot's sequence.
package netconf

import (
	"kiln/internal/ctxutil"

	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"kiln/configs/node"
	"kiln/init/boot/console"
)

const (
	// SysClassNet lists the network interfaces.
	SysClassNet = "/sys/class/net"
	resolvConf  = "/etc/resolv.conf"
	// carrierWait bounds the wait for a cable (a virtio NIC has one at
	// once; a physical link needs a few seconds to negotiate).
	carrierWait = 8 * time.Second
	// dhcpWait bounds the boot's wait for a first lease; after it the
	// boot goes on and the lease is sought in the background.
	dhcpWait = 30 * time.Second
)

// State is the main interface's plan as the network left it; the DHCP
// keeper changes it when the lease does. It also holds the service range
// the node keeps a route for (SetServiceRange). The zero value is ready to
// use.
type State struct {
	mu   sync.Mutex
	plan *Plan // nil: no address (yet)

	// routeMu serializes the service route's decisions: the boot sets
	// the range while the DHCP keeper may apply a lease.
	routeMu  sync.Mutex
	service  *ServiceRange // nil: no route to keep
	routeWhy string        // the reason last said on the console
}

// Get returns the main interface's plan, nil when it has no address.
func (s *State) Get() *Plan {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.plan
}

func (s *State) set(p *Plan) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.plan = p
}

// Setup brings up lo, then the configured interface, statically or with
// DHCP, and the additional interfaces. With DHCP it returns the lease's
// keeper (the first lease got, or still sought after dhcpWait), whose Keep
// the caller runs in the background for as long as the node: PID 1 starts
// it as a boot step of its own. No NIC at all is a warning: a single
// master on loopback still works.
func Setup(ctx context.Context, con *console.Console, cfg node.Network, st *State) (*DHCP, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("lo up: %w", err)
	}
	link, err := pickLink(ctx, cfg)
	if err != nil {
		return nil, err
	}
	setupAdditional(ctx, con, cfg.Additional)
	if link == nil {
		con.Warn("network: no network interface found; only loopback")
		return nil, nil
	}
	name := link.Attrs().Name
	if !cfg.UsesDHCP() {
		p, err := StaticPlan(name, cfg)
		if err != nil {
			return nil, err
		}
		if err := applyPlan(link, p, nil); err != nil {
			return nil, fmt.Errorf("network %s: %w", name, err)
		}
		st.set(&p)
		con.Stage("network: %s", p)
		return nil, nil
	}
	k := &DHCP{link: link, con: con, dns: cfg.DNS, state: st}
	first, cancel := context.WithTimeout(ctx, dhcpWait)
	err = k.acquire(first)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		con.Warn("network: no DHCP lease on %s after %s (%v); still trying in the background", name, dhcpWait, err)
	}
	return k, nil
}

// setupAdditional brings up the additional interfaces with their static
// addresses. A missing one is a warning: the node's own address is on the
// main interface.
func setupAdditional(ctx context.Context, con *console.Console, extra []node.Network) {
	for _, n := range extra {
		link, err := pickLink(ctx, n)
		if err != nil || link == nil {
			con.Warn("network: additional interface %s: not found (%v); skipped", n.Interface, err)
			continue
		}
		p, err := StaticPlan(n.Interface, n)
		if err == nil {
			err = applyPlan(link, p, nil)
		}
		if err != nil {
			con.Warn("network: additional interface %s: %v", n.Interface, err)
			continue
		}
		con.Stage("network: %s (additional)", p)
	}
}

// pickLink finds the configured interface (waiting for it to appear), or
// the first NIC with a carrier. Every candidate is brought up: a carrier
// shows only on an interface that is up. nil means there is none.
func pickLink(ctx context.Context, cfg node.Network) (netlink.Link, error) {
	deadline := time.Now().Add(carrierWait)
	if !cfg.AutoInterface() {
		for {
			l, err := netlink.LinkByName(cfg.Interface)
			if err == nil {
				return l, netlink.LinkSetUp(l)
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("network.interface %s: %w (interfaces: %s)", cfg.Interface, err, nicNames(ListNICs(SysClassNet)))
			}
			if err := ctxutil.Sleep(ctx, 200*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	nics := ListNICs(SysClassNet)
	if len(nics) == 0 {
		return nil, nil
	}
	for _, n := range nics {
		if l, err := netlink.LinkByName(n.Name); err == nil {
			_ = netlink.LinkSetUp(l)
		}
	}
	chosen := nics[0]
	for {
		if c, ok := chooseNIC(ListNICs(SysClassNet), cfg); ok {
			chosen = c
			break
		}
		if time.Now().After(deadline) {
			break // none has a carrier: take the first and let DHCP try
		}
		if err := ctxutil.Sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return netlink.LinkByName(chosen.Name)
}

func nicNames(nics []NIC) string {
	if len(nics) == 0 {
		return "none"
	}
	s := ""
	for i, n := range nics {
		if i > 0 {
			s += ", "
		}
		s += n.Name
	}
	return s
}

// applyPlan configures an interface: MTU, address (replacing old's if it
// changed), default route, resolv.conf.
func applyPlan(link netlink.Link, p Plan, old *Plan) error {
	if p.MTU > 0 && link.Attrs().MTU != p.MTU {
		if err := netlink.LinkSetMTU(link, p.MTU); err != nil {
			return fmt.Errorf("mtu %d: %w", p.MTU, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: prefixIPNet(p.Addr)}); err != nil {
		return fmt.Errorf("address %s: %w", p.Addr, err)
	}
	if old != nil && old.Addr.IsValid() && old.Addr != p.Addr {
		_ = netlink.AddrDel(link, &netlink.Addr{IPNet: prefixIPNet(old.Addr)})
	}
	if p.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: p.Gateway.AsSlice()}
		if !p.Addr.Masked().Contains(p.Gateway) {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s: %w", p.Gateway, err)
		}
	}
	if len(p.DNS) > 0 || len(p.Search) > 0 {
		if err := writeFileAtomic(resolvConf, p.resolvConf(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".kiln-tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// WriteHostFiles writes /etc/hostname and /etc/hosts for a node named name
// whose address is addr (127.0.1.1 when it has none yet, as Debian does),
// so that the name resolves without DNS.
func WriteHostFiles(name, addr string) error {
	if addr == "" {
		addr = "127.0.1.1"
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", addr, name)
	if err := writeFileAtomic("/etc/hosts", []byte(hosts), 0o644); err != nil {
		return err
	}
	return writeFileAtomic("/etc/hostname", []byte(name+"\n"), 0o644)
}
