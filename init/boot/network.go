package boot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"

	"kiln/configs/node"
)

const (
	sysClassNet = "/sys/class/net"
	resolvConf  = "/etc/resolv.conf"
	// carrierWait bounds the wait for a cable (a virtio NIC has one at
	// once; a physical link needs a few seconds to negotiate).
	carrierWait = 8 * time.Second
	// dhcpWait bounds the boot's wait for a first lease; after it the
	// boot goes on and the lease is sought in the background.
	dhcpWait = 30 * time.Second
)

// netState is the network as the boot left it.
type netState struct {
	mu   sync.Mutex
	plan *ifPlan // nil: no address (yet)
}

func (s *netState) get() *ifPlan {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.plan
}

func (s *netState) set(p *ifPlan) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.plan = p
}

// setupNetwork brings up lo, then the configured interface, statically or
// with DHCP. With DHCP, a goroutine keeps the lease (renewing at T1) until
// ctx ends. No NIC at all is a warning: a single master on loopback still
// works.
func setupNetwork(ctx context.Context, con *console, cfg node.Network, st *netState) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	link, err := pickLink(ctx, cfg)
	if err != nil {
		return err
	}
	setupAdditional(ctx, con, cfg.Additional)
	if link == nil {
		con.warn("network: no network interface found; only loopback")
		return nil
	}
	name := link.Attrs().Name
	if !cfg.UsesDHCP() {
		p, err := staticPlan(name, cfg)
		if err != nil {
			return err
		}
		if err := applyPlan(link, p, nil); err != nil {
			return fmt.Errorf("network %s: %w", name, err)
		}
		st.set(&p)
		con.stage("network: %s", p)
		return nil
	}
	k := &dhcpKeeper{link: link, con: con, dns: cfg.DNS, state: st}
	first, cancel := context.WithTimeout(ctx, dhcpWait)
	err = k.acquire(first)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		con.warn("network: no DHCP lease on %s after %s (%v); still trying in the background", name, dhcpWait, err)
	}
	go func() {
		defer recoverTo(con, "dhcp")
		k.keep(ctx)
	}()
	return nil
}

// setupAdditional brings up the additional interfaces with their static
// addresses. A missing one is a warning: the node's own address is on the
// main interface.
func setupAdditional(ctx context.Context, con *console, extra []node.Network) {
	for _, n := range extra {
		link, err := pickLink(ctx, n)
		if err != nil || link == nil {
			con.warn("network: additional interface %s: not found (%v); skipped", n.Interface, err)
			continue
		}
		p, err := staticPlan(n.Interface, n)
		if err == nil {
			err = applyPlan(link, p, nil)
		}
		if err != nil {
			con.warn("network: additional interface %s: %v", n.Interface, err)
			continue
		}
		con.stage("network: %s (additional)", p)
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
				return nil, fmt.Errorf("network.interface %s: %w (interfaces: %s)", cfg.Interface, err, nicNames(listNICs(sysClassNet)))
			}
			if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	nics := listNICs(sysClassNet)
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
		if c, ok := chooseNIC(listNICs(sysClassNet), cfg); ok {
			chosen = c
			break
		}
		if time.Now().After(deadline) {
			break // none has a carrier: take the first and let DHCP try
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return netlink.LinkByName(chosen.Name)
}

func nicNames(nics []nic) string {
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

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// applyPlan configures an interface: MTU, address (replacing old's if it
// changed), default route, resolv.conf.
func applyPlan(link netlink.Link, p ifPlan, old *ifPlan) error {
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

// dhcpKeeper holds a DHCP lease on one interface.
type dhcpKeeper struct {
	link  netlink.Link
	con   *console
	dns   []string // the config's network.dns, overriding the server's
	state *netState
	lease *nclient4.Lease
	plan  *ifPlan
}

var dhcpOptions = dhcpv4.WithRequestedOptions(
	dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
	dhcpv4.OptionDomainName, dhcpv4.OptionDNSDomainSearchList, dhcpv4.OptionInterfaceMTU,
)

func (k *dhcpKeeper) client() (*nclient4.Client, error) {
	return nclient4.New(k.link.Attrs().Name, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
}

// acquire gets a new lease (DISCOVER, OFFER, REQUEST, ACK), retrying until
// ctx ends, and applies it.
func (k *dhcpKeeper) acquire(ctx context.Context) error {
	var last error
	for {
		c, err := k.client()
		if err == nil {
			var lease *nclient4.Lease
			lease, err = c.Request(ctx, dhcpOptions)
			c.Close()
			if err == nil {
				return k.apply(lease)
			}
		}
		last = err
		if err := sleepCtx(ctx, time.Second); err != nil {
			return last
		}
	}
}

func (k *dhcpKeeper) apply(lease *nclient4.Lease) error {
	p, err := leasePlan(k.link.Attrs().Name, lease.ACK, k.dns)
	if err != nil {
		return err
	}
	if err := applyPlan(k.link, p, k.plan); err != nil {
		return err
	}
	if k.plan == nil || k.plan.Addr != p.Addr || k.plan.Gateway != p.Gateway {
		k.con.stage("network: %s", p)
	}
	k.lease, k.plan = lease, &p
	k.state.set(&p)
	return nil
}

// keep renews the lease at T1, then at half the remaining time until it
// expires; an expired lease's address is removed and a new lease sought.
func (k *dhcpKeeper) keep(ctx context.Context) {
	for ctx.Err() == nil {
		if k.lease == nil {
			if err := k.acquire(ctx); err != nil && ctx.Err() == nil {
				k.con.warn("network: DHCP on %s: %v", k.link.Attrs().Name, err)
			}
			continue
		}
		wait, expired := renewDelay(*k.plan, k.lease.CreationTime, time.Now())
		if k.plan.Lease == 0 {
			<-ctx.Done() // an infinite lease
			return
		}
		if expired {
			k.con.warn("network: DHCP lease for %s on %s expired", k.plan.Addr, k.link.Attrs().Name)
			_ = netlink.AddrDel(k.link, &netlink.Addr{IPNet: prefixIPNet(k.plan.Addr)})
			k.lease, k.plan = nil, nil
			k.state.set(nil)
			continue
		}
		if sleepCtx(ctx, wait) != nil {
			return
		}
		if err := k.renew(ctx); err != nil && ctx.Err() == nil {
			k.con.warn("network: DHCP renewal on %s: %v", k.link.Attrs().Name, err)
			var nak *nclient4.ErrNak
			if errors.As(err, &nak) {
				k.lease = nil // the server says no: start over
			}
		}
	}
}

func (k *dhcpKeeper) renew(ctx context.Context) error {
	c, err := k.client()
	if err != nil {
		return err
	}
	defer c.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	lease, err := c.Renew(rctx, k.lease, dhcpOptions)
	if err != nil {
		return err
	}
	return k.apply(lease)
}
