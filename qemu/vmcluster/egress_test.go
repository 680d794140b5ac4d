package vmcluster

import (
	"reflect"
	"strings"
	"testing"

	"kiln/configs/node"
	"kiln/qemu"
)

// Without Options.Egress nothing has a way out: the masters' eth1 is the
// restricted user network of the forwards, with no route or name server,
// and the workers have the L2 only. With it every node's eth1 is QEMU's
// NAT, its default route and DNS, while the node's address stays eth0's.
// The QEMU side is checked as options only: no VM is started.
func TestNodeConfigEgress(t *testing.T) {
	c := &Cluster{opts: Options{Masters: 1, Workers: 1}}
	master := &Node{Name: MasterName, Role: node.RoleMaster, Address: "10.120.0.10", MAC: "52:54:00:99:00:0a", NodeAPIPort: 40000}
	worker := &Node{Name: "kiln-worker-1", Role: node.RoleWorker, Address: "10.120.0.11", MAC: "52:54:00:99:00:0b", secret: strings.Repeat("s", 32)}
	c.Nodes = []*Node{master, worker}
	load := func(n *Node) node.Config {
		t.Helper()
		base := node.Default()
		base.Role = n.Role
		cfg, err := node.Overlay(base, c.nodeConfig(n))
		if err != nil {
			t.Fatalf("%s: %v\n%s", n.Name, err, c.nodeConfig(n))
		}
		return cfg
	}

	// Closed (the default).
	if cfg := load(master); len(cfg.Network.Additional) != 1 || !reflect.DeepEqual(cfg.Network.Additional[0], node.Network{Interface: "eth1", Address: userNetGuest}) {
		t.Errorf("master's network without egress: %+v", cfg.Network)
	}
	if cfg := load(worker); len(cfg.Network.Additional) != 0 {
		t.Errorf("worker's network without egress: %+v", cfg.Network)
	}
	for _, n := range c.Nodes {
		if y := string(c.nodeConfig(n)); strings.Contains(y, "gateway") || strings.Contains(y, "dns") {
			t.Errorf("%s: a way out without egress:\n%s", n.Name, y)
		}
	}
	if u := c.userNet(master, 0); u.Egress || len(u.Forwards) != 2 {
		t.Errorf("master's user network without egress: %+v", u)
	}
	if c.Egress() {
		t.Error("Egress() without Options.Egress")
	}

	// Open.
	c.opts.Egress = true
	for _, n := range c.Nodes {
		cfg := load(n)
		want := []node.Network{{Interface: "eth1", Address: userNetGuest, Gateway: "10.0.2.2", DNS: []string{"10.0.2.3"}}}
		if !reflect.DeepEqual(cfg.Network.Additional, want) {
			t.Errorf("%s: additional %+v, want %+v", n.Name, cfg.Network.Additional, want)
		}
		if cfg.Network.Interface != "eth0" || cfg.Network.Address != n.Address+"/24" || cfg.Network.Gateway != "" || len(cfg.Network.DNS) != 0 {
			t.Errorf("%s: main interface %+v, want eth0 with the node's address only", n.Name, cfg.Network)
		}
	}
	mu, wu := c.userNet(master, 0), c.userNet(worker, 0)
	if !mu.Egress || len(mu.Forwards) != 2 || mu.Forwards[1].HostPort != master.NodeAPIPort {
		t.Errorf("master's user network with egress: %+v", mu)
	}
	if !wu.Egress || len(wu.Forwards) != 0 || len(wu.GuestForwards) != 0 || wu.MAC != "52:54:00:98:00:0b" {
		t.Errorf("worker's user network with egress: %+v", wu)
	}
	for _, u := range []qemu.UserNet{mu, wu} {
		var qc qemu.Config
		if err := qemu.WithUserNetConfig(u)(&qc); err != nil || !qc.Egress() {
			t.Errorf("%+v: %v, egress %t", u, err, qc.Egress())
		}
	}
	if !c.Egress() {
		t.Error("Egress() false with Options.Egress")
	}
}
