package node

import (
	"fmt"
	"net/netip"

	"kiln/internal/bounded"
)

// controlPlane.vip is the API's virtual IP: an IPv4 address on the
// masters' network that no machine has as its own. The master that holds
// the Lease kube-system/kiln-vip (one at a time, and only while its API
// server is ready) adds it beside its node address and announces it with
// gratuitous ARP; when it dies, another master takes the Lease and the
// address over (components/vip). A client that uses the VIP (the cluster's
// endpoint, kiln gen cluster --endpoint VIP:6443) therefore needs no load
// balancer in front of the masters. A worker takes it as one more seed of
// its API load balancer.
//
// IPv4 only: the takeover is announced by ARP; IPv6's neighbour
// advertisements are not implemented.

// VIPAddr is controlPlane.vip parsed; ok is false when none is set (or
// it does not parse: Validate reports that).
func (c *Config) VIPAddr() (netip.Addr, bool) {
	if c.ControlPlane.VIP == "" {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(c.ControlPlane.VIP)
	return a, err == nil && a.Is4()
}

// validateVIP checks controlPlane.vip: an IPv4 unicast address that is no
// node's own (not a master of the list, not this node), and, on a master
// whose static address says what its network is, inside that network:
// the holder puts it on the interface that carries the node's address,
// and the other machines find it there by ARP, which does not cross a
// router. (With DHCP the network is known only at run time: the vip
// component then refuses, on the console, an address outside it. A
// worker may be on another network than the masters, routed to them.)
func (c *Config) validateVIP() []error {
	v := c.ControlPlane.VIP
	if v == "" {
		return nil
	}
	ip, err := netip.ParseAddr(v)
	if err != nil || !ip.Is4() {
		return []error{fmt.Errorf("controlPlane.vip: %s is not an IPv4 address (want a free address on the masters' network, e.g. 10.0.0.5)", bounded.Quote(v))}
	}
	if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() || ip.IsLinkLocalUnicast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return []error{fmt.Errorf("controlPlane.vip: %s cannot be a virtual IP (want a unicast address on the masters' network, e.g. 10.0.0.5)", v)}
	}
	var errs []error
	for i, m := range c.ControlPlane.Masters {
		if sameIP(m, v) {
			errs = append(errs, fmt.Errorf("controlPlane.vip: %s is controlPlane.masters[%d]: the virtual IP must be an address no machine has, which the masters pass between them", v, i))
		}
	}
	if sameIP(c.Address, v) {
		errs = append(errs, fmt.Errorf("controlPlane.vip: %s is this node's address: the virtual IP must be an address no machine has", v))
	}
	if c.Role != RoleMaster || c.Network.UsesDHCP() {
		return errs
	}
	p, err := netip.ParsePrefix(c.Network.Address)
	if err != nil || !p.Addr().Is4() {
		return errs // network.address is reported by its own check
	}
	subnet := p.Masked()
	switch {
	case p.Addr() == ip:
		errs = append(errs, fmt.Errorf("controlPlane.vip: %s is this node's network.address: the virtual IP must be an address no machine has", v))
	case !subnet.Contains(ip):
		errs = append(errs, fmt.Errorf("controlPlane.vip: %s is not in this master's network %s (network.address %s): the holder adds it beside the node's address and announces it by ARP, so it must be on that network", v, subnet, c.Network.Address))
	case p.Bits() < 31 && (ip == subnet.Addr() || ip == lastAddr(subnet)):
		errs = append(errs, fmt.Errorf("controlPlane.vip: %s is the network or broadcast address of %s", v, subnet))
	}
	return errs
}

// lastAddr is the highest address of an IPv4 prefix (its broadcast).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}
