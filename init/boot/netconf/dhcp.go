package netconf

import (
	"kiln/internal/ctxutil"

	"context"
	"errors"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"

	"kiln/init/boot/console"
)

// DHCP holds a DHCP lease on one interface (Setup returns it).
type DHCP struct {
	link  netlink.Link
	con   *console.Console
	dns   []string // the config's network.dns, overriding the server's
	state *State
	lease *nclient4.Lease
	plan  *Plan
}

var dhcpOptions = dhcpv4.WithRequestedOptions(
	dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
	dhcpv4.OptionDomainName, dhcpv4.OptionDNSDomainSearchList, dhcpv4.OptionInterfaceMTU,
)

func (k *DHCP) client() (*nclient4.Client, error) {
	return nclient4.New(k.link.Attrs().Name, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
}

// acquire gets a new lease (DISCOVER, OFFER, REQUEST, ACK), retrying until
// ctx ends, and applies it.
func (k *DHCP) acquire(ctx context.Context) error {
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
		if err := ctxutil.Sleep(ctx, time.Second); err != nil {
			return last
		}
	}
}

func (k *DHCP) apply(lease *nclient4.Lease) error {
	p, err := LeasePlan(k.link.Attrs().Name, lease.ACK, k.dns)
	if err != nil {
		return err
	}
	if err := applyPlan(k.link, p, k.plan); err != nil {
		return err
	}
	if k.plan == nil || k.plan.Addr != p.Addr || k.plan.Gateway != p.Gateway {
		k.con.Stage("network: %s", p)
	}
	k.lease, k.plan = lease, &p
	k.state.set(&p)
	// A lease can change what covers the service range (a router now,
	// or none), and a lease got again after one expired has its address
	// back without the route the kernel removed with it.
	k.state.syncServiceRoute(k.con)
	return nil
}

// Interface is the interface the lease is for.
func (k *DHCP) Interface() string { return k.link.Attrs().Name }

// Keep renews the lease at T1, then at half the remaining time until it
// expires; an expired lease's address is removed and a new lease sought.
// It returns when ctx ends.
func (k *DHCP) Keep(ctx context.Context) {
	for ctx.Err() == nil {
		if k.lease == nil {
			if err := k.acquire(ctx); err != nil && ctx.Err() == nil {
				k.con.Warn("network: DHCP on %s: %v", k.link.Attrs().Name, err)
			}
			continue
		}
		wait, expired := renewDelay(*k.plan, k.lease.CreationTime, time.Now())
		if k.plan.Lease == 0 {
			<-ctx.Done() // an infinite lease
			return
		}
		if expired {
			k.con.Warn("network: DHCP lease for %s on %s expired", k.plan.Addr, k.link.Attrs().Name)
			_ = netlink.AddrDel(k.link, &netlink.Addr{IPNet: prefixIPNet(k.plan.Addr)})
			k.lease, k.plan = nil, nil
			k.state.set(nil)
			continue
		}
		if ctxutil.Sleep(ctx, wait) != nil {
			return
		}
		if err := k.renew(ctx); err != nil && ctx.Err() == nil {
			k.con.Warn("network: DHCP renewal on %s: %v", k.link.Attrs().Name, err)
			var nak *nclient4.ErrNak
			if errors.As(err, &nak) {
				k.lease = nil // the server says no: start over
			}
		}
	}
}

func (k *DHCP) renew(ctx context.Context) error {
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
