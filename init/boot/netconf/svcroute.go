package netconf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"kiln/init/boot/console"
)

// The node's own route to the cluster's Services.
//
// kube-proxy (nftables) sends a ClusterIP to a pod with a DNAT in the
// output hook, but the kernel routes a packet the node sends itself
// before that hook: with no route covering the ClusterIP, connect() fails
// with "network is unreachable" before kube-proxy's rule sees the packet.
// Pods do not need one (their default route is the bridge, and their
// packets are DNATed in prerouting); the node's own network namespace
// does: hostNetwork pods, the kubelet's probes, and a master's API server
// calling admission webhooks and aggregated APIs (metrics-server) at their
// ClusterIPs. A network with a default route covers the range; a private
// L2 without one (kiln cluster's 10.120.0.0/24, an isolated rack) does not.
//
// There PID 1 routes the service range through the interface that carries
// the node's address, with that address as the source: what a default
// route on that interface would have given. The route only has to exist:
// the DNAT then sends the packet where the pod is, and kube-proxy drops
// traffic to service addresses it has not allocated, so nothing of the
// range goes out on the wire. PID 1 owns it because PID 1 owns the node's
// addresses and routes: it decides again after every DHCP lease it
// applies (a lease that expired took the route with its address; a new
// one may bring a default route), and it never touches a workstation's
// routes (host mode has no PID 1).

// ServiceRange is what the node's own traffic to Services needs a route
// for: the cluster's service range, and the node's address, whose
// interface carries the route.
type ServiceRange struct {
	CIDR   netip.Prefix // the cluster's serviceCIDR
	NodeIP netip.Addr   // the node's address (the config's address)
}

// serviceRouteProtocol marks the route PID 1 adds ("proto static" in
// ip route): PID 1 recognises its own route by it, its destination (the
// service range) and the absence of a gateway, and replaces or removes
// only that one.
const serviceRouteProtocol = unix.RTPROT_STATIC

// kernelRoute is a route of the main table, as the decision needs it.
type kernelRoute struct {
	Dst       netip.Prefix
	Type      int // unix.RTN_*
	Protocol  int // unix.RTPROT_*
	LinkIndex int
	Gw        netip.Addr
	Src       netip.Addr
}

// kernelAddr is an address of an interface.
type kernelAddr struct {
	LinkIndex int
	Link      string
	Addr      netip.Addr
}

type routeAction int

const (
	routeKeep   routeAction = iota // nothing to change
	routeAdd                       // add the route, or replace ours (another interface or source)
	routeDelete                    // ours is no longer needed, or its address is gone
)

// routeDecision is what to do with the service route, and the line that
// says why on the console.
type routeDecision struct {
	Action routeAction
	Route  kernelRoute // the route to add, or ours to delete
	Link   string      // Route's interface, for the console
	Why    string
}

// isOurs tells PID 1's service route from every other.
func (r kernelRoute) isOurs(cidr netip.Prefix) bool {
	return r.Dst == cidr && r.Protocol == serviceRouteProtocol && !r.Gw.IsValid()
}

// covers reports whether the route sends all of cidr somewhere: a unicast
// route (not blackhole, unreachable or prohibit, which would refuse the
// packet before the DNAT just as no route does) whose destination holds
// the whole range. A more specific route inside the range covers only its
// part: ours still covers the rest, and the more specific one keeps its
// part (the DNAT applies whichever route took the packet).
func (r kernelRoute) covers(cidr netip.Prefix) bool {
	return r.Type == unix.RTN_UNICAST && r.Dst.IsValid() && r.Dst.Addr().Is4() == cidr.Addr().Is4() &&
		r.Dst.Bits() <= cidr.Bits() && r.Dst.Contains(cidr.Addr())
}

func (r kernelRoute) String() string {
	s := r.Dst.String()
	if r.Dst.Bits() == 0 {
		s = "the default route"
	}
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	return s
}

// decideServiceRoute decides what the node's routes need for its own
// traffic to want's range, from the interfaces' addresses and the main
// table's routes: nothing when another route covers the range already,
// else a route of the range through the interface that carries the node
// address, with that address as the source. Our route left over from an
// earlier decision is removed when another route covers the range or when
// the node address is on no interface any more.
func decideServiceRoute(want ServiceRange, addrs []kernelAddr, routes []kernelRoute) routeDecision {
	cidr, ip := want.CIDR.Masked(), want.NodeIP.Unmap()
	switch {
	case !cidr.IsValid():
		return routeDecision{Why: "no service range"}
	case !ip.IsValid() || ip.IsUnspecified():
		return routeDecision{Why: "no node address"}
	case ip.IsLoopback():
		// A node on loopback only (no NIC): nothing leaves it, and its
		// address cannot be the source of a route on a network.
		return routeDecision{Why: fmt.Sprintf("the node address %s is loopback", ip)}
	case ip.Is4() != cidr.Addr().Is4():
		return routeDecision{Why: fmt.Sprintf("the node address %s is not of the service range %s's IP family", ip, cidr)}
	}
	var ours *kernelRoute
	for i, r := range routes {
		if r.isOurs(cidr) {
			ours = &routes[i]
		}
	}
	for _, r := range routes {
		if r.isOurs(cidr) || !r.covers(cidr) {
			continue
		}
		why := fmt.Sprintf("the service range %s goes by %s", cidr, r)
		if ours != nil {
			return routeDecision{Action: routeDelete, Route: *ours, Link: linkName(addrs, ours.LinkIndex), Why: why}
		}
		return routeDecision{Why: why}
	}
	var link *kernelAddr
	for i, a := range addrs {
		if a.Addr.Unmap() == ip {
			link = &addrs[i]
			break
		}
	}
	if link == nil {
		why := fmt.Sprintf("the node address %s is on no interface", ip)
		if ours != nil {
			return routeDecision{Action: routeDelete, Route: *ours, Link: linkName(addrs, ours.LinkIndex), Why: why}
		}
		return routeDecision{Why: why}
	}
	r := kernelRoute{Dst: cidr, Type: unix.RTN_UNICAST, Protocol: serviceRouteProtocol, LinkIndex: link.LinkIndex, Src: ip}
	why := fmt.Sprintf("no route covers the service range %s", cidr)
	if ours != nil && ours.LinkIndex == r.LinkIndex && ours.Src == r.Src {
		return routeDecision{Route: r, Link: link.Link, Why: why}
	}
	return routeDecision{Action: routeAdd, Route: r, Link: link.Link, Why: why}
}

func linkName(addrs []kernelAddr, index int) string {
	for _, a := range addrs {
		if a.LinkIndex == index {
			return a.Link
		}
	}
	return fmt.Sprintf("interface %d", index)
}

// line is the console line of a decision that changed something.
func (d routeDecision) line() string {
	r := fmt.Sprintf("route %s dev %s", d.Route.Dst, d.Link)
	if d.Route.Src.IsValid() {
		r += " src " + d.Route.Src.String()
	}
	switch d.Action {
	case routeAdd:
		return fmt.Sprintf("network: %s for the node's own traffic to Services (%s)", r, d.Why)
	case routeDelete:
		return fmt.Sprintf("network: %s removed (%s)", r, d.Why)
	}
	return ""
}

// SetServiceRange makes the node keep a route for its own traffic to the
// cluster's Services (see decideServiceRoute), now and after every DHCP
// lease the keeper applies.
func (s *State) SetServiceRange(con *console.Console, want ServiceRange) {
	s.routeMu.Lock()
	s.service = &want
	s.routeMu.Unlock()
	s.syncServiceRoute(con)
}

// syncServiceRoute applies the service route decision, if a range was
// set. It says on the console what it changed, and why it added none the
// first time that reason comes up (not at every renewal); a failure is a
// warning: only the node's own traffic to Services depends on it.
func (s *State) syncServiceRoute(con *console.Console) {
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	if s.service == nil {
		return
	}
	d, err := readRoutes(*s.service)
	if err == nil {
		err = applyRoute(d)
	}
	switch {
	case err != nil:
		con.Warn("network: the route for the cluster's Services (%s): %v; the node's own connections to ClusterIPs may fail with \"network is unreachable\"", s.service.CIDR, err)
		s.routeWhy = ""
	case d.Action != routeKeep:
		con.Stage("%s", d.line())
		s.routeWhy = d.Why
	case d.Why != s.routeWhy:
		if d.Route.Dst.IsValid() {
			con.Stage("network: route %s dev %s src %s for the node's own traffic to Services", d.Route.Dst, d.Link, d.Route.Src)
		} else {
			con.Stage("network: no route added for the cluster's Services: %s", d.Why)
		}
		s.routeWhy = d.Why
	}
}

// The kernel's side of syncServiceRoute; variables for the tests, which
// run without root.
var (
	readRoutes = readServiceRoute
	applyRoute = applyServiceRoute
)

// readServiceRoute reads the kernel's addresses and main routing table of
// want's family and decides.
func readServiceRoute(want ServiceRange) (routeDecision, error) {
	family := netlink.FAMILY_V4
	if want.CIDR.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	var (
		addrs  []netlink.Addr
		routes []netlink.Route
		err    error
	)
	// A dump the kernel interrupted (the tables changed meanwhile) is
	// asked again.
	for range 3 {
		if addrs, err = netlink.AddrList(nil, family); err == nil {
			routes, err = netlink.RouteList(nil, family)
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return routeDecision{}, err
	}
	names := map[int]string{}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	return decideServiceRoute(want, fromNetlinkAddrs(addrs, names), fromNetlinkRoutes(routes)), nil
}

func fromNetlinkAddrs(addrs []netlink.Addr, names map[int]string) []kernelAddr {
	var out []kernelAddr
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		out = append(out, kernelAddr{LinkIndex: a.LinkIndex, Link: names[a.LinkIndex], Addr: ip.Unmap()})
	}
	return out
}

func fromNetlinkRoutes(routes []netlink.Route) []kernelRoute {
	var out []kernelRoute
	for _, r := range routes {
		k := kernelRoute{Type: r.Type, Protocol: int(r.Protocol), LinkIndex: r.LinkIndex}
		if r.Dst != nil {
			ip, ok := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			if !ok {
				continue
			}
			k.Dst = netip.PrefixFrom(ip.Unmap(), ones)
		} else {
			// An older netlink gives a default route no destination.
			k.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if r.Family == netlink.FAMILY_V6 {
				k.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
		}
		k.Gw, _ = netip.AddrFromSlice(r.Gw)
		k.Gw = k.Gw.Unmap()
		if len(r.MultiPath) > 0 && !k.Gw.IsValid() {
			// A multipath route's gateways are in its next hops: it is
			// not ours either way.
			k.Gw, _ = netip.AddrFromSlice(r.MultiPath[0].Gw)
		}
		k.Src, _ = netip.AddrFromSlice(r.Src)
		k.Src = k.Src.Unmap()
		out = append(out, k)
	}
	return out
}

// applyServiceRoute carries out a decision. RouteReplace makes adding
// idempotent and moves ours to another interface or source in place.
func applyServiceRoute(d routeDecision) error {
	if d.Action == routeKeep {
		return nil
	}
	r := &netlink.Route{
		LinkIndex: d.Route.LinkIndex,
		Dst:       prefixIPNet(d.Route.Dst),
		Src:       net.IP(d.Route.Src.AsSlice()),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  netlink.RouteProtocol(serviceRouteProtocol),
		Table:     unix.RT_TABLE_MAIN,
		Type:      unix.RTN_UNICAST,
	}
	if d.Action == routeDelete {
		r.Src = nil
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("removing route %s dev %s: %w", d.Route.Dst, d.Link, err)
		}
		return nil
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s dev %s src %s: %w", d.Route.Dst, d.Link, d.Route.Src, err)
	}
	return nil
}
