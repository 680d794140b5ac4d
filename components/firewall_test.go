package components

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/internal/testutil/netns"
)

func firewallEnv(t *testing.T, role node.Role, address string) *Env {
	t.Helper()
	cfg := node.Default()
	cfg.Role = role
	cfg.Address = address
	return &Env{Config: cfg, Cluster: &cluster.Cluster{PodCIDR: cluster.DefaultPodCIDR}, NodeName: "n", DataDir: t.TempDir()}
}

func firewallText(t *testing.T, env *Env) string {
	t.Helper()
	tx := knftables.NewFake(knftables.InetFamily, FirewallTable).NewTransaction()
	if err := firewallRules(tx, env); err != nil {
		t.Fatal(err)
	}
	return tx.String()
}

const firewallHead = `add table inet kiln-firewall
delete table inet kiln-firewall
add table inet kiln-firewall { comment "kiln: what pods and other hosts may reach on this node (components/firewall.go)" ; }
add chain inet kiln-firewall input { type filter hook input priority 0 ; policy accept ; comment "traffic to this node's own addresses" ; }
`

func TestFirewallRulesMaster(t *testing.T) {
	want := firewallHead +
		`add rule inet kiln-firewall input ip saddr 10.244.0.0/16 tcp dport { 2379, 2380, 10257, 10259, 10260 } reject with tcp reset comment "pods: not etcd, the controller-manager, the scheduler or kiln's status port"
add rule inet kiln-firewall input tcp dport { 2379, 2380 } ip saddr { 127.0.0.0/8, 192.0.2.10 } accept
add rule inet kiln-firewall input tcp dport { 2379, 2380 } ip6 saddr { ::1 } accept
add rule inet kiln-firewall input tcp dport { 2379, 2380 } reject with tcp reset comment "etcd: loopback and the masters only"
`
	if got := firewallText(t, firewallEnv(t, node.RoleMaster, "192.0.2.10")); got != want {
		t.Errorf("master ruleset:\n%s\nwant:\n%s", got, want)
	}
}

func TestFirewallRulesWorker(t *testing.T) {
	want := firewallHead +
		`add rule inet kiln-firewall input ip saddr 10.244.0.0/16 tcp dport { 10260 } reject with tcp reset comment "pods: not etcd, the controller-manager, the scheduler or kiln's status port"
`
	if got := firewallText(t, firewallEnv(t, node.RoleWorker, "192.0.2.20")); got != want {
		t.Errorf("worker ruleset:\n%s\nwant:\n%s", got, want)
	}
}

// The ports come from the node config; an IPv6 master is an ip6 source.
func TestFirewallRulesPortsAndIPv6(t *testing.T) {
	env := firewallEnv(t, node.RoleMaster, "2001:db8::10")
	env.Config.Ports.EtcdClient = 12379
	env.Cluster.PodCIDR = "fd00:10:244::/56"
	got := firewallText(t, env)
	for _, want := range []string{
		"ip6 saddr fd00:10:244::/56 tcp dport { 2380, 10257, 10259, 10260, 12379 } reject",
		"tcp dport { 12379, 2380 } ip saddr { 127.0.0.0/8 } accept",
		"tcp dport { 12379, 2380 } ip6 saddr { ::1, 2001:db8::10 } accept",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, got)
		}
	}
}

// Every node on a network gets the firewall, first; a node on loopback
// (host mode on a workstation) none.
func TestFirewallRunsFirstOnNetworkedNodes(t *testing.T) {
	for _, role := range []node.Role{node.RoleMaster, node.RoleWorker} {
		for _, runPods := range []bool{true, false} {
			cfg := node.Default()
			cfg.Role, cfg.RunPods, cfg.Address = role, runPods, "192.0.2.10"
			if c := For(&cfg); c[0].Name() != node.ComponentFirewall {
				t.Errorf("%s (runPods %v): first component %s, want the firewall", role, runPods, c[0].Name())
			}
			cfg.Address = "127.0.0.2"
			for _, c := range For(&cfg) {
				if c.Name() == node.ComponentFirewall {
					t.Errorf("%s on loopback runs the firewall", role)
				}
			}
		}
	}
}

// TestFirewallInNamespace loads the table into a network namespace (the
// "node") with the real nft, and connects over a veth from another (the
// "pods" side, which holds a pod address, a second master's and a worker's)
// to listeners on the guarded and the open ports. Needs root and nft.
func TestFirewallInNamespace(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft is not installed (Debian: apt-get install nftables; scripts/install-deps.sh)")
	}
	id := strconv.Itoa(os.Getpid() % 100000)
	nodeNS := netns.New(t, "kfw-node-"+id)
	podNS := netns.New(t, "kfw-pods-"+id)
	nodeNS.Veth(t, "n0", podNS, "p0")
	nodeNS.Addr(t, "n0", "192.0.2.1/24")
	nodeNS.Addr(t, "n0", "10.244.7.1/24")
	const (
		pod          = "10.244.7.5"
		otherMaster  = "192.0.2.20"
		worker       = "192.0.2.30"
		nodeAddr     = "192.0.2.1"
		serviceIP    = "10.96.0.1"
		serviceRoute = "10.96.0.0/12"
	)
	for _, a := range []string{pod + "/24", otherMaster + "/24", worker + "/24"} {
		podNS.Addr(t, "p0", a)
	}
	nodeNS.Up(t, "n0")
	podNS.Up(t, "p0")
	run := func(ns *netns.NS, stdin string, args ...string) string {
		t.Helper()
		cmd := ns.Command(args[0], args[1:]...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run(podNS, "", "ip", "route", "add", serviceRoute, "via", nodeAddr)
	// Another program's table, which the firewall must leave alone, and
	// a Service as kube-proxy makes it: DNAT in prerouting to the node's
	// API port, and one pointed at etcd.
	run(nodeNS, `table ip kube-proxy {
	chain services {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr `+serviceIP+` tcp dport 443 dnat to `+nodeAddr+`:6443
		ip daddr `+serviceIP+` tcp dport 2379 dnat to `+nodeAddr+`:2379
	}
}
`, "nft", "-f", "-")

	// Listeners on every address of the node, the worst case.
	for _, port := range []string{"2379", "2380", "6443", "10250", "10257", "10259", "10260"} {
		var ln net.Listener
		if err := nodeNS.Do(func() (err error) { ln, err = net.Listen("tcp4", ":"+port); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	dial := func(ns *netns.NS, from, to string) error {
		return ns.Do(func() error {
			d := net.Dialer{Timeout: 3 * time.Second}
			if from != "" {
				d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
			}
			c, err := d.Dial("tcp4", to)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	check := func(ns *netns.NS, from, to string, open bool) {
		t.Helper()
		err := dial(ns, from, to)
		switch {
		case open && err != nil:
			t.Errorf("%s → %s: %v, want it open", from, to, err)
		case !open && !errors.Is(err, syscall.ECONNREFUSED):
			t.Errorf("%s → %s: %v, want connection refused", from, to, err)
		}
	}

	env := firewallEnv(t, node.RoleMaster, nodeAddr)
	// Two masters, as a cluster with several would list them.
	defer func(f func(*Env) []netip.Addr) { masterAddresses = f }(masterAddresses)
	masterAddresses = func(*Env) []netip.Addr {
		return []netip.Addr{netip.MustParseAddr(nodeAddr), netip.MustParseAddr(otherMaster)}
	}
	master := func() error { return (Firewall{}).Prepare(env) }
	if err := nodeNS.Do(master); err != nil {
		t.Fatal(err)
	}
	first := run(nodeNS, "", "nft", "list", "table", "inet", FirewallTable)
	// Idempotent: loaded again, the same table, and kube-proxy's is still there.
	if err := nodeNS.Do(master); err != nil {
		t.Fatalf("loaded a second time: %v", err)
	}
	if again := run(nodeNS, "", "nft", "list", "table", "inet", FirewallTable); again != first {
		t.Errorf("loaded twice:\n%s\nonce:\n%s", again, first)
	}
	if tables := run(nodeNS, "", "nft", "list", "tables"); !strings.Contains(tables, "table ip kube-proxy") || !strings.Contains(tables, "table inet kiln-firewall") {
		t.Errorf("tables after the firewall: %s", tables)
	}
	if b, err := os.ReadFile(filepath.Join(env.DataDir, firewallRuleset)); err != nil || !strings.Contains(string(b), "reject with tcp reset") {
		t.Errorf("ruleset file: %v %q", err, b)
	}

	at := func(port string) string { return net.JoinHostPort(nodeAddr, port) }
	for _, p := range []string{"2379", "2380", "10257", "10259", "10260"} {
		check(podNS, pod, at(p), false)
	}
	check(podNS, pod, at("6443"), true)
	check(podNS, pod, at("10250"), true)
	check(podNS, pod, net.JoinHostPort(serviceIP, "443"), true)   // the kubernetes Service, DNATed
	check(podNS, pod, net.JoinHostPort(serviceIP, "2379"), false) // a Service pointed at etcd
	check(podNS, worker, at("2379"), false)
	check(podNS, worker, at("2380"), false)
	check(podNS, worker, at("10260"), true)
	check(podNS, worker, at("6443"), true)
	check(nodeNS, "", "127.0.0.1:2379", true)
	check(nodeNS, nodeAddr, at("2379"), true)
	check(podNS, otherMaster, at("2379"), true)
	check(podNS, otherMaster, at("2380"), true)

	// The same node as a worker: the table is replaced, not added to.
	env.Config.Role = node.RoleWorker
	if err := nodeNS.Do(master); err != nil {
		t.Fatal(err)
	}
	check(podNS, worker, at("2379"), true)
	check(podNS, pod, at("2379"), true)
	check(podNS, pod, at("10260"), false)
	if got := run(nodeNS, "", "nft", "list", "table", "inet", FirewallTable); strings.Contains(got, "2379") {
		t.Errorf("a worker's table still guards etcd:\n%s", got)
	}
}
