package up

import (
	"errors"
	"net"
	"strings"
	"testing"

	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
)

// A master with a VIP reports whether the address is on one of its
// interfaces; a worker, or a master without one, reports nothing.
func TestVIPAnnotation(t *testing.T) {
	cfg := node.Default()
	cfg.Address = "10.0.0.11"
	if vipAnnotation(&cfg, net.InterfaceAddrs) != nil {
		t.Error("a master without a VIP reports one")
	}
	cfg.ControlPlane.VIP = "10.0.0.5"
	nodeOnly := []net.Addr{&net.IPNet{IP: net.ParseIP("10.0.0.11"), Mask: net.CIDRMask(24, 32)}}
	holding := append(nodeOnly, &net.IPNet{IP: net.ParseIP("10.0.0.5"), Mask: net.CIDRMask(32, 32)})
	for _, tc := range []struct {
		name  string
		addrs []net.Addr
		err   error
		held  bool
	}{
		{"holder", holding, nil, true},
		{"another master holds it", nodeOnly, nil, false},
		{"addresses unreadable", nil, errors.New("no netlink"), false},
	} {
		annotate := vipAnnotation(&cfg, func() ([]net.Addr, error) { return tc.addrs, tc.err })
		var st nodeapi.Status
		annotate(&st)
		if st.VIP == nil || st.VIP.Address != "10.0.0.5" || st.VIP.Held != tc.held {
			t.Errorf("%s: VIP %+v, want 10.0.0.5 held %t", tc.name, st.VIP, tc.held)
		}
	}
	cfg.Role = node.RoleWorker
	if vipAnnotation(&cfg, net.InterfaceAddrs) != nil {
		t.Error("a worker reports a VIP")
	}
}

func TestCheckVIPRange(t *testing.T) {
	cl := &cluster.Cluster{Dir: "/c", ServiceCIDR: "10.96.0.0/12", PodCIDR: "10.244.0.0/16"}
	for vip, want := range map[string]string{
		"":           "",
		"10.120.0.5": "",
		"10.96.0.5":  "controlPlane.vip 10.96.0.5 is inside the cluster's serviceCIDR",
		"10.244.9.9": "inside the cluster's podCIDR",
	} {
		cfg := node.Default()
		cfg.ControlPlane.VIP = vip
		err := checkVIPRange(&cfg, cl)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("%q: %v, want %q", vip, err, want)
		}
	}
}
