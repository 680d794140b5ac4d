package netconf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"kiln/configs/node"
)

// Plan is what the network step applies to an interface: from the
// config (static) or from a DHCP lease.
type Plan struct {
	Interface string
	Addr      netip.Prefix
	Gateway   netip.Addr // invalid: no default route
	DNS       []netip.Addr
	Search    []string
	MTU       int // 0: leave it
	// DHCP only.
	DHCP   bool
	Server netip.Addr
	Lease  time.Duration // 0: infinite
	T1, T2 time.Duration
}

func (p Plan) String() string {
	s := fmt.Sprintf("%s %s", p.Interface, p.Addr)
	if p.Gateway.IsValid() {
		s += " via " + p.Gateway.String()
	}
	if len(p.DNS) > 0 {
		var d []string
		for _, a := range p.DNS {
			d = append(d, a.String())
		}
		s += ", dns " + strings.Join(d, " ")
	}
	if p.MTU > 0 {
		s += fmt.Sprintf(", mtu %d", p.MTU)
	}
	if p.DHCP {
		lease := "infinite"
		if p.Lease > 0 {
			lease = p.Lease.String()
		}
		s += fmt.Sprintf(" (dhcp from %s, lease %s)", p.Server, lease)
	} else {
		s += " (static)"
	}
	return s
}

// StaticPlan turns the config's network section into a plan.
func StaticPlan(ifname string, n node.Network) (Plan, error) {
	p := Plan{Interface: ifname}
	var err error
	if p.Addr, err = netip.ParsePrefix(n.Address); err != nil {
		return p, fmt.Errorf("network.address: %w", err)
	}
	if n.Gateway != "" {
		if p.Gateway, err = netip.ParseAddr(n.Gateway); err != nil {
			return p, fmt.Errorf("network.gateway: %w", err)
		}
	}
	if p.DNS, err = parseAddrs(n.DNS); err != nil {
		return p, fmt.Errorf("network.dns: %w", err)
	}
	return p, nil
}

func parseAddrs(ss []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// LeasePlan turns a DHCP ACK into a plan. dnsOverride (the config's
// network.dns), when not empty, replaces the servers offered.
func LeasePlan(ifname string, ack *dhcpv4.DHCPv4, dnsOverride []string) (Plan, error) {
	p := Plan{Interface: ifname, DHCP: true}
	if ack == nil {
		return p, errors.New("no DHCP answer")
	}
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || ip.IsUnspecified() {
		return p, fmt.Errorf("the DHCP answer has no address (yiaddr %v)", ack.YourIPAddr)
	}
	bits := 24
	if m := ack.SubnetMask(); m != nil {
		ones, size := m.Size()
		if size != 32 {
			return p, fmt.Errorf("the DHCP answer's subnet mask %v is not a prefix", m)
		}
		bits = ones
	} else {
		// No mask: the classful default, as dhclient does.
		switch {
		case ip.As4()[0] < 128:
			bits = 8
		case ip.As4()[0] < 192:
			bits = 16
		}
	}
	p.Addr = netip.PrefixFrom(ip, bits)
	for _, r := range ack.Router() {
		if a, ok := netip.AddrFromSlice(r.To4()); ok && !a.IsUnspecified() {
			p.Gateway = a
			break
		}
	}
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d.To4()); ok && !a.IsUnspecified() {
			p.DNS = append(p.DNS, a)
		}
	}
	if len(dnsOverride) > 0 {
		var err error
		if p.DNS, err = parseAddrs(dnsOverride); err != nil {
			return p, fmt.Errorf("network.dns: %w", err)
		}
	}
	if l := ack.DomainSearch(); l != nil {
		p.Search = append(p.Search, l.Labels...)
	} else if d := ack.DomainName(); d != "" {
		p.Search = []string{d}
	}
	if b := ack.Options.Get(dhcpv4.OptionInterfaceMTU); len(b) == 2 {
		if mtu := int(binary.BigEndian.Uint16(b)); mtu >= 576 {
			p.MTU = mtu
		}
	}
	if s, ok := netip.AddrFromSlice(ack.ServerIdentifier().To4()); ok {
		p.Server = s
	}
	p.Lease = ack.IPAddressLeaseTime(0)
	if p.Lease == 0xffffffff*time.Second {
		p.Lease = 0
	}
	if p.Lease > 0 {
		// RFC 2131 4.4.5: T1 defaults to half the lease, T2 to 7/8.
		p.T1 = ack.IPAddressRenewalTime(p.Lease / 2)
		p.T2 = ack.IPAddressRebindingTime(p.Lease * 7 / 8)
		if p.T1 <= 0 || p.T1 > p.Lease {
			p.T1 = p.Lease / 2
		}
		if p.T2 < p.T1 || p.T2 > p.Lease {
			p.T2 = p.Lease * 7 / 8
		}
	}
	return p, nil
}

// renewDelay says how long to wait before the next renewal attempt of a
// lease obtained at got, at time now: T1 for the first, then half the time
// left before the lease expires (at least 10 s, as RFC 2131 4.4.5 suggests
// 60 s and QEMU's tests want less). expired is true once the lease is over.
func renewDelay(p Plan, got, now time.Time) (wait time.Duration, expired bool) {
	if p.Lease <= 0 {
		return 0, false
	}
	t1, end := got.Add(p.T1), got.Add(p.Lease)
	switch {
	case !now.Before(end):
		return 0, true
	case now.Before(t1):
		return t1.Sub(now), false
	}
	wait = max(end.Sub(now)/2, 10*time.Second)
	if now.Add(wait).After(end) {
		wait = end.Sub(now)
	}
	return wait, false
}

// resolvConf is /etc/resolv.conf for a plan.
func (p Plan) resolvConf() []byte {
	var b strings.Builder
	b.WriteString("# written by kiln's PID 1 (" + p.Interface + ")\n")
	if len(p.Search) > 0 {
		b.WriteString("search " + strings.Join(p.Search, " ") + "\n")
	}
	for _, d := range p.DNS {
		b.WriteString("nameserver " + d.String() + "\n")
	}
	return []byte(b.String())
}

// NIC is a network interface as sysfs shows it.
type NIC struct {
	Name    string
	Index   int
	MAC     net.HardwareAddr
	Carrier bool
}

// ListNICs returns the Ethernet interfaces backed by a device (not lo, not
// bridges or veths), sorted by interface index: the kernel numbers them in
// the order their drivers found them.
func ListNICs(SysClassNet string) []NIC {
	ents, err := os.ReadDir(SysClassNet)
	if err != nil {
		return nil
	}
	read := func(name, attr string) string {
		b, _ := os.ReadFile(filepath.Join(SysClassNet, name, attr))
		return strings.TrimSpace(string(b))
	}
	var out []NIC
	for _, e := range ents {
		n := e.Name()
		if read(n, "type") != "1" { // ARPHRD_ETHER
			continue
		}
		if _, err := os.Stat(filepath.Join(SysClassNet, n, "device")); err != nil {
			continue // virtual
		}
		idx, _ := strconv.Atoi(read(n, "ifindex"))
		mac, _ := net.ParseMAC(read(n, "address"))
		out = append(out, NIC{Name: n, Index: idx, MAC: mac, Carrier: read(n, "carrier") == "1"})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// chooseNIC picks the interface the config names, or the first with a
// carrier.
func chooseNIC(nics []NIC, n node.Network) (NIC, bool) {
	for _, c := range nics {
		if n.AutoInterface() && c.Carrier || !n.AutoInterface() && c.Name == n.Interface {
			return c, true
		}
	}
	return NIC{}, false
}

// DefaultHostname is the hostname of a node whose config names none:
// kiln- and the last three bytes of its first NIC's MAC address.
func DefaultHostname(nics []NIC) string {
	for _, n := range nics {
		if len(n.MAC) >= 3 {
			m := n.MAC[len(n.MAC)-3:]
			return fmt.Sprintf("kiln-%02x%02x%02x", m[0], m[1], m[2])
		}
	}
	return "kiln"
}
