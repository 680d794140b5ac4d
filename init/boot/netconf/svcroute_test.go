package netconf

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"kiln/init/boot/console"
	"kiln/internal/testutil"
)

func TestDecideServiceRoute(t *testing.T) {
	pfx, ip := netip.MustParsePrefix, netip.MustParseAddr
	svc := pfx("10.96.0.0/12")
	// The interfaces of a kiln cluster master: eth0 on the cluster's L2,
	// eth1 on QEMU's user network (network.additional).
	eth0 := kernelAddr{LinkIndex: 2, Link: "eth0", Addr: ip("10.120.0.10")}
	eth1 := kernelAddr{LinkIndex: 3, Link: "eth1", Addr: ip("10.0.2.15")}
	lo := kernelAddr{LinkIndex: 1, Link: "lo", Addr: ip("127.0.0.1")}
	subnet := func(a kernelAddr, p string) kernelRoute {
		return kernelRoute{Dst: pfx(p), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_KERNEL, LinkIndex: a.LinkIndex, Src: a.Addr}
	}
	via := func(dst, gw string, a kernelAddr) kernelRoute {
		return kernelRoute{Dst: pfx(dst), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_BOOT, LinkIndex: a.LinkIndex, Gw: ip(gw)}
	}
	ours := func(a kernelAddr) kernelRoute {
		return kernelRoute{Dst: svc, Type: unix.RTN_UNICAST, Protocol: serviceRouteProtocol, LinkIndex: a.LinkIndex, Src: a.Addr}
	}
	l2 := []kernelRoute{subnet(eth0, "10.120.0.0/24"), subnet(eth1, "10.0.2.0/24")}

	for _, tc := range []struct {
		name   string
		want   ServiceRange
		addrs  []kernelAddr
		routes []kernelRoute
		action routeAction
		route  kernelRoute // when action is not routeKeep
		why    string      // a part of the reason
	}{
		{
			name:  "kiln cluster's L2, no default route: through the node address's interface, not the other NIC",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{lo, eth0, eth1}, routes: l2,
			action: routeAdd, route: ours(eth0), why: "no route covers the service range 10.96.0.0/12",
		},
		{
			name:  "the node address on an additional interface",
			want:  ServiceRange{svc, eth1.Addr},
			addrs: []kernelAddr{lo, eth0, eth1}, routes: l2,
			action: routeAdd, route: ours(eth1),
		},
		{
			name:  "a range not written masked",
			want:  ServiceRange{pfx("10.96.0.1/12"), eth0.Addr},
			addrs: []kernelAddr{eth0}, routes: l2[:1],
			action: routeAdd, route: ours(eth0),
		},
		{
			name:  "already there: nothing to do (a DHCP renewal)",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{eth0, eth1}, routes: append(l2[:2:2], ours(eth0)),
			action: routeKeep, why: "no route covers",
		},
		{
			name:  "ours on another interface: replaced",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{eth0, eth1}, routes: append(l2[:2:2], ours(eth1)),
			action: routeAdd, route: ours(eth0),
		},
		{
			name:  "DHCP with a router: the default route covers the range",
			want:  ServiceRange{svc, eth1.Addr},
			addrs: []kernelAddr{eth1}, routes: []kernelRoute{via("0.0.0.0/0", "10.0.2.2", eth1), subnet(eth1, "10.0.2.0/24")},
			action: routeKeep, why: "the service range 10.96.0.0/12 goes by the default route via 10.0.2.2",
		},
		{
			name:  "a default route on another NIC covers it too",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{eth0, eth1}, routes: append(l2[:2:2], via("0.0.0.0/0", "10.0.2.2", eth1)),
			action: routeKeep, why: "default route",
		},
		{
			name:  "a router appeared since (a new lease): ours goes",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{eth0}, routes: []kernelRoute{subnet(eth0, "10.120.0.0/24"), ours(eth0), via("0.0.0.0/0", "10.120.0.1", eth0)},
			action: routeDelete, route: ours(eth0), why: "default route via 10.120.0.1",
		},
		{
			name:  "a static route that holds the whole range",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{eth0}, routes: []kernelRoute{subnet(eth0, "10.120.0.0/24"), via("10.0.0.0/8", "10.120.0.1", eth0)},
			action: routeKeep, why: "goes by 10.0.0.0/8 via 10.120.0.1",
		},
		{
			name:  "another route of exactly the range (not ours: a gateway)",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{eth0}, routes: []kernelRoute{subnet(eth0, "10.120.0.0/24"), via("10.96.0.0/12", "10.120.0.1", eth0)},
			action: routeKeep, why: "goes by 10.96.0.0/12 via 10.120.0.1",
		},
		{
			name:  "a route of part of the range covers only that part",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{eth0}, routes: []kernelRoute{subnet(eth0, "10.120.0.0/24"), via("10.100.0.0/16", "10.120.0.1", eth0)},
			action: routeAdd, route: ours(eth0),
		},
		{
			name:  "a blackhole default refuses the packet before the DNAT: no cover",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{eth0}, routes: []kernelRoute{subnet(eth0, "10.120.0.0/24"), {Dst: pfx("0.0.0.0/0"), Type: unix.RTN_BLACKHOLE}},
			action: routeAdd, route: ours(eth0),
		},
		{
			name:  "no lease yet: the node address is on no interface",
			want:  ServiceRange{svc, ip("10.120.0.50")},
			addrs: []kernelAddr{lo, eth0}, routes: l2[:1],
			action: routeKeep, why: "the node address 10.120.0.50 is on no interface",
		},
		{
			name:  "the lease's address went: ours goes too",
			want:  ServiceRange{svc, eth0.Addr},
			addrs: []kernelAddr{lo, eth1}, routes: []kernelRoute{ours(eth0)},
			action: routeDelete, route: ours(eth0), why: "on no interface",
		},
		{
			name:   "a node on loopback only",
			want:   ServiceRange{svc, lo.Addr},
			addrs:  []kernelAddr{lo},
			action: routeKeep, why: "loopback",
		},
		{
			name:   "an IPv6 node address with an IPv4 range",
			want:   ServiceRange{svc, ip("fd00::10")},
			addrs:  []kernelAddr{{LinkIndex: 2, Link: "eth0", Addr: ip("fd00::10")}},
			action: routeKeep, why: "IP family",
		},
		{
			name:   "IPv6: the same rule",
			want:   ServiceRange{pfx("fd00:96::/108"), ip("fd00::10")},
			addrs:  []kernelAddr{{LinkIndex: 2, Link: "eth0", Addr: ip("fd00::10")}},
			routes: []kernelRoute{{Dst: pfx("fd00::/64"), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_KERNEL, LinkIndex: 2}},
			action: routeAdd,
			route:  kernelRoute{Dst: pfx("fd00:96::/108"), Type: unix.RTN_UNICAST, Protocol: serviceRouteProtocol, LinkIndex: 2, Src: ip("fd00::10")},
		},
		{
			name:   "no range",
			want:   ServiceRange{NodeIP: eth0.Addr},
			addrs:  []kernelAddr{eth0},
			action: routeKeep, why: "no service range",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decideServiceRoute(tc.want, tc.addrs, tc.routes)
			if d.Action != tc.action {
				t.Fatalf("action %d, want %d (%+v)", d.Action, tc.action, d)
			}
			if tc.action != routeKeep && d.Route != tc.route {
				t.Errorf("route %+v\nwant  %+v", d.Route, tc.route)
			}
			if !strings.Contains(d.Why, tc.why) {
				t.Errorf("why %q, want it to say %q", d.Why, tc.why)
			}
		})
	}
}

func TestServiceRouteLine(t *testing.T) {
	r := kernelRoute{Dst: netip.MustParsePrefix("10.96.0.0/12"), LinkIndex: 2, Src: netip.MustParseAddr("10.120.0.10")}
	add := routeDecision{Action: routeAdd, Route: r, Link: "eth0", Why: "no route covers the service range 10.96.0.0/12"}
	if got, want := add.line(), "network: route 10.96.0.0/12 dev eth0 src 10.120.0.10 for the node's own traffic to Services (no route covers the service range 10.96.0.0/12)"; got != want {
		t.Errorf("add:\n%q\nwant\n%q", got, want)
	}
	del := routeDecision{Action: routeDelete, Route: r, Link: "eth0", Why: "the service range 10.96.0.0/12 goes by the default route via 10.120.0.1"}
	if got, want := del.line(), "network: route 10.96.0.0/12 dev eth0 src 10.120.0.10 removed (the service range 10.96.0.0/12 goes by the default route via 10.120.0.1)"; got != want {
		t.Errorf("delete:\n%q\nwant\n%q", got, want)
	}
}

func TestFromNetlink(t *testing.T) {
	_, svc, _ := net.ParseCIDR("10.96.0.0/12")
	routes := fromNetlinkRoutes([]netlink.Route{
		// netlink v1.3 names the default route 0.0.0.0/0.
		{Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: net.IPv4(10, 0, 2, 2), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_BOOT, LinkIndex: 2},
		// Older versions give it none.
		{Gw: net.ParseIP("10.0.2.2"), Type: unix.RTN_UNICAST, Family: netlink.FAMILY_V4},
		{Dst: svc, Src: net.IPv4(10, 120, 0, 10), Type: unix.RTN_UNICAST, Protocol: serviceRouteProtocol, LinkIndex: 2, Scope: netlink.SCOPE_LINK},
	})
	if len(routes) != 3 {
		t.Fatalf("%d routes: %+v", len(routes), routes)
	}
	def := netip.MustParsePrefix("0.0.0.0/0")
	if routes[0].Dst != def || routes[0].Gw != netip.MustParseAddr("10.0.2.2") || routes[1].Dst != def {
		t.Errorf("default routes: %+v, %+v", routes[0], routes[1])
	}
	if !routes[2].isOurs(netip.MustParsePrefix("10.96.0.0/12")) || routes[2].Src != netip.MustParseAddr("10.120.0.10") {
		t.Errorf("ours not recognised: %+v", routes[2])
	}
	if routes[0].isOurs(def) || !routes[0].covers(netip.MustParsePrefix("10.96.0.0/12")) {
		t.Errorf("default route: %+v", routes[0])
	}
	addrs := fromNetlinkAddrs([]netlink.Addr{
		{IPNet: &net.IPNet{IP: net.IPv4(10, 120, 0, 10), Mask: net.CIDRMask(24, 32)}, LinkIndex: 2},
		{LinkIndex: 3}, // no address: skipped
	}, map[int]string{2: "eth0"})
	if len(addrs) != 1 || addrs[0] != (kernelAddr{LinkIndex: 2, Link: "eth0", Addr: netip.MustParseAddr("10.120.0.10")}) {
		t.Errorf("addresses %+v", addrs)
	}
}

// TestSyncServiceRoute runs the State's side with a fake kernel: the
// route is added once and said once; a renewal that finds it there says
// nothing; a failure is a warning, not an error.
func TestSyncServiceRoute(t *testing.T) {
	var out testutil.SyncBuffer
	con := console.New(&out, time.Now())
	svc := netip.MustParsePrefix("10.96.0.0/12")
	eth0 := kernelAddr{LinkIndex: 2, Link: "eth0", Addr: netip.MustParseAddr("10.120.0.10")}
	var table []kernelRoute
	var readErr error
	applied := 0
	oldRead, oldApply := readRoutes, applyRoute
	t.Cleanup(func() { readRoutes, applyRoute = oldRead, oldApply })
	readRoutes = func(want ServiceRange) (routeDecision, error) {
		return decideServiceRoute(want, []kernelAddr{eth0}, table), readErr
	}
	applyRoute = func(d routeDecision) error {
		if d.Action == routeAdd {
			table = append(table, d.Route)
			applied++
		}
		return nil
	}

	var st State
	st.syncServiceRoute(con) // no range set: nothing
	if out.String() != "" || applied != 0 {
		t.Fatalf("without a range: %d applied, console %q", applied, out.String())
	}
	st.SetServiceRange(con, ServiceRange{svc, eth0.Addr})
	st.syncServiceRoute(con) // a renewal
	if applied != 1 || strings.Count(out.String(), "network: route 10.96.0.0/12 dev eth0 src 10.120.0.10 for the node's own traffic to Services (no route covers") != 1 {
		t.Errorf("%d applied, console:\n%s", applied, out.String())
	}
	if strings.Count(out.String(), "\n") != 1 {
		t.Errorf("the renewal said something:\n%s", out.String())
	}
	readErr = errors.New("netlink: permission denied")
	st.syncServiceRoute(con)
	if !strings.Contains(out.String(), "warning: network: the route for the cluster's Services (10.96.0.0/12): netlink: permission denied") {
		t.Errorf("a failure is not a warning:\n%s", out.String())
	}
}
