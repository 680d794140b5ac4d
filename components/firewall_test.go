package components

import (
	"errors"
	"io"
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
add table inet kiln-firewall { comment "kiln: what pods and other hosts may reach on this node, and pods' way out (components/firewall.go)" ; }
add chain inet kiln-firewall input { type filter hook input priority 0 ; policy accept ; comment "traffic to this node's own addresses" ; }
`

func TestFirewallRulesMaster(t *testing.T) {
	want := firewallHead +
		`add rule inet kiln-firewall input ip saddr 10.244.0.0/16 tcp dport { 2379, 2380, 10257, 10259, 10260 } reject with tcp reset comment "pods: not etcd, the controller-manager, the scheduler or kiln's status port"
add rule inet kiln-firewall input tcp dport { 2379, 2380 } ip saddr { 127.0.0.0/8, 192.0.2.10 } accept
add rule inet kiln-firewall input tcp dport { 2379, 2380 } ip6 saddr { ::1 } accept
add rule inet kiln-firewall input tcp dport { 2379, 2380 } reject with tcp reset comment "etcd: loopback and the masters only"
` + podEgressHead + `add rule inet kiln-firewall postrouting ip daddr { 192.0.2.10 } tcp dport { 2379, 2380, 10257, 10259 } return comment "the masters' guarded ports: their firewall sees the pod's address"
` + podEgressTail
	if got := firewallText(t, firewallEnv(t, node.RoleMaster, "192.0.2.10")); got != want {
		t.Errorf("master ruleset:\n%s\nwant:\n%s", got, want)
	}
}

// The postrouting chain of a node that runs pods, before and after the
// masters' rule.
const (
	podEgressHead = `add chain inet kiln-firewall postrouting { type nat hook postrouting priority 100 ; comment "pods' connections out of the pod CIDR leave with this node's address" ; }
add rule inet kiln-firewall postrouting ip daddr 10.244.0.0/16 return comment "pod to pod, across nodes too: the pods' own addresses"
add rule inet kiln-firewall postrouting ip daddr 224.0.0.0/4 return comment "multicast"
add rule inet kiln-firewall postrouting tcp dport { 10260 } return comment "kiln's status port on any node: its firewall sees the pod's address"
`
	podEgressTail = `add rule inet kiln-firewall postrouting ip saddr 10.244.0.0/16 masquerade fully-random comment "pods to outside the pod CIDR: this node's address"
`
)

// A master that runs no pods masquerades nothing: no postrouting chain.
func TestFirewallRulesMasterWithoutPods(t *testing.T) {
	env := firewallEnv(t, node.RoleMaster, "192.0.2.10")
	env.Config.RunPods = false
	got := firewallText(t, env)
	if strings.Contains(got, "postrouting") || strings.Contains(got, "masquerade") {
		t.Errorf("a master without pods masquerades:\n%s", got)
	}
	if !strings.Contains(got, "etcd: loopback and the masters only") {
		t.Errorf("a master without pods lost its input rules:\n%s", got)
	}
}

// Every master of controlPlane.masters keeps its guarded ports from
// masquerade, in the pod CIDR's family only.
func TestFirewallRulesMasqueradeMasters(t *testing.T) {
	env := firewallEnv(t, node.RoleMaster, "192.0.2.10")
	env.Config.ControlPlane.Masters = []string{"192.0.2.10", "192.0.2.11", "2001:db8::12", "192.0.2.12"}
	got := firewallText(t, env)
	want := `add rule inet kiln-firewall postrouting ip daddr { 192.0.2.10, 192.0.2.11, 192.0.2.12 } tcp dport { 2379, 2380, 10257, 10259 } return`
	if !strings.Contains(got, want) {
		t.Errorf("ruleset lacks %q:\n%s", want, got)
	}
	if strings.Contains(got, "ip daddr { 2001:db8::12") || strings.Contains(got, "ip6 daddr") {
		t.Errorf("an IPv6 master in an IPv4 pod network's postrouting chain:\n%s", got)
	}
	// The order that matters: every exception before the masquerade.
	last := strings.LastIndex(got, " return")
	if m := strings.Index(got, "masquerade"); m < last {
		t.Errorf("masquerade before an exception:\n%s", got)
	}
}

func TestFirewallRulesWorker(t *testing.T) {
	want := firewallHead +
		`add rule inet kiln-firewall input ip saddr 10.244.0.0/16 tcp dport { 10260 } reject with tcp reset comment "pods: not etcd, the controller-manager, the scheduler or kiln's status port"
` + podEgressHead + podEgressTail
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
		"postrouting ip6 daddr fd00:10:244::/56 return",
		"postrouting ip6 daddr ff00::/8 return",
		"postrouting ip6 daddr { 2001:db8::10 } tcp dport { 12379, 2380, 10257, 10259 } return",
		"postrouting ip6 saddr fd00:10:244::/56 masquerade fully-random",
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
	if got := run(nodeNS, "", "nft", "list", "table", "inet", FirewallTable); strings.Contains(got, "etcd: loopback and the masters only") || strings.Contains(got, "127.0.0.0/8") {
		t.Errorf("a worker's table still guards etcd:\n%s", got)
	}
}

// TestPodMasqueradeInNamespace forwards a pod's connections through a
// "node" namespace with the firewall's table loaded, with the real nft:
//
//	pod (10.244.7.5) ─ node (10.244.7.1 | 192.0.2.1 | 198.51.100.1) ─ outside (192.0.2.2)
//	                                                                ─ peer (198.51.100.2, pods 10.244.9.0/24)
//
// "outside" (a router, a registry on the nodes' network, QEMU's NAT) has
// no route to the pod CIDR; "peer" is another node, which has one (as
// flannel's routes give it), and holds a pod. Each listener answers with
// the source address it sees. Needs root and nft.
func TestPodMasqueradeInNamespace(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft is not installed (Debian: apt-get install nftables; scripts/install-deps.sh)")
	}
	id := strconv.Itoa(os.Getpid() % 100000)
	podNS := netns.New(t, "kmq-pod-"+id)
	nodeNS := netns.New(t, "kmq-node-"+id)
	outNS := netns.New(t, "kmq-out-"+id)
	peerNS := netns.New(t, "kmq-peer-"+id)
	const (
		pod      = "10.244.7.5"
		bridge   = "10.244.7.1"
		nodeAddr = "192.0.2.1"
		outside  = "192.0.2.2"
		nodeToP  = "198.51.100.1"
		peer     = "198.51.100.2"
		peerPod  = "10.244.9.5"
	)
	podNS.Veth(t, "p0", nodeNS, "n0")
	nodeNS.Veth(t, "n1", outNS, "o0")
	nodeNS.Veth(t, "n2", peerNS, "q0")
	podNS.Addr(t, "p0", pod+"/24")
	nodeNS.Addr(t, "n0", bridge+"/24")
	nodeNS.Addr(t, "n1", nodeAddr+"/24")
	nodeNS.Addr(t, "n2", nodeToP+"/24")
	outNS.Addr(t, "o0", outside+"/24")
	peerNS.Addr(t, "q0", peer+"/24")
	peerNS.Addr(t, "q0", peerPod+"/24")
	podNS.Up(t, "p0")
	nodeNS.Up(t, "n0", "n1", "n2")
	outNS.Up(t, "o0")
	peerNS.Up(t, "q0")
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
	run(podNS, "", "ip", "route", "add", "default", "via", bridge)
	run(nodeNS, "", "ip", "route", "add", "10.244.9.0/24", "via", peer)
	run(peerNS, "", "ip", "route", "add", "10.244.0.0/16", "via", nodeToP)
	err := nodeNS.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0) })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(run(nodeNS, "", "cat", "/proc/sys/net/ipv4/ip_forward")); got != "1" {
		t.Fatalf("node namespace: ip_forward %s", got)
	}
	// The tables the firewall must leave alone, as kube-proxy and
	// kube-network-policies make them: Services DNATed in prerouting (one
	// to the peer's pod, one to outside), and a filter chain in postrouting
	// before SNAT that counts what it sees from the pod to outside.
	run(nodeNS, `table ip kube-proxy {
	chain services {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.96.0.1 tcp dport 80 dnat to `+peerPod+`:8080
		ip daddr 10.96.0.2 tcp dport 80 dnat to `+outside+`:8080
	}
}
table inet kube-network-policies {
	chain postrouting {
		type filter hook postrouting priority srcnat - 5; policy accept;
		ip saddr `+pod+` ip daddr `+outside+` tcp dport 8080 counter
	}
}
`, "nft", "-f", "-")

	// Listeners that answer with the address a connection comes from.
	listen := func(ns *netns.NS, port string) {
		var ln net.Listener
		if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", ":"+port); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(c.RemoteAddr().(*net.TCPAddr).IP.String()))
				c.Close()
			}
		}()
	}
	listen(outNS, "8080")
	for _, p := range []string{"8080", "2379", "10260"} {
		listen(peerNS, p)
	}
	// source is the address the listener at to saw, "" when no answer came.
	source := func(to string) string {
		t.Helper()
		var c net.Conn
		err := podNS.Do(func() (err error) {
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).Dial("tcp4", to)
			return err
		})
		if err != nil {
			return ""
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("pod → %s: %v", to, err)
		}
		return string(b)
	}
	check := func(to, want string) {
		t.Helper()
		if got := source(to); got != want {
			if want == "" {
				t.Errorf("pod → %s: answered, seen from %s; want no answer", to, got)
			} else if got == "" {
				t.Errorf("pod → %s: no answer; want one, seen from %s", to, want)
			} else {
				t.Errorf("pod → %s: seen from %s, want %s", to, got, want)
			}
		}
	}
	at := net.JoinHostPort

	// Without kiln's table: outside never answers (the problem), the peer
	// sees the pod.
	check(at(outside, "8080"), "")
	check(at(peerPod, "8080"), pod)

	env := firewallEnv(t, node.RoleWorker, nodeAddr)
	load := func() {
		t.Helper()
		if err := nodeNS.Do(func() error { return (Firewall{}).Prepare(env) }); err != nil {
			t.Fatal(err)
		}
	}
	load()
	first := run(nodeNS, "", "nft", "list", "table", "inet", FirewallTable)
	load() // idempotent: the same table, the others still there
	if again := run(nodeNS, "", "nft", "list", "table", "inet", FirewallTable); again != first {
		t.Errorf("loaded twice:\n%s\nonce:\n%s", again, first)
	}
	tables := run(nodeNS, "", "nft", "list", "tables")
	for _, want := range []string{"table ip kube-proxy", "table inet kube-network-policies", "table inet " + FirewallTable} {
		if !strings.Contains(tables, want) {
			t.Errorf("tables after the firewall lack %s: %s", want, tables)
		}
	}

	check(at(outside, "8080"), nodeAddr)   // out of the cluster: the node's address
	check(at(peer, "8080"), nodeToP)       // another node: the address of the interface it leaves by
	check(at(peerPod, "8080"), pod)        // pod to pod keeps its address
	check(at("10.96.0.1", "80"), pod)      // a Service whose endpoint is a pod
	check(at("10.96.0.2", "80"), nodeAddr) // a Service whose endpoint is outside
	check(at(peer, "10260"), pod)          // kiln's status port: the peer's firewall sees the pod
	check(at(peer, "2379"), nodeToP)       // a worker's address: a master's etcd refuses it
	if got := run(nodeNS, "", "nft", "list", "chain", "inet", "kube-network-policies", "postrouting"); !strings.Contains(got, "counter packets") || strings.Contains(got, "counter packets 0 ") {
		t.Errorf("the network policies' chain did not see the pod's address before masquerade:\n%s", got)
	}

	// The node as a master (the peer another master): the masters'
	// guarded ports keep the pod's address.
	defer func(f func(*Env) []netip.Addr) { masterAddresses = f }(masterAddresses)
	masterAddresses = func(*Env) []netip.Addr {
		return []netip.Addr{netip.MustParseAddr(nodeAddr), netip.MustParseAddr(peer)}
	}
	env.Config.Role = node.RoleMaster
	load()
	check(at(peer, "2379"), pod)
	check(at(peer, "8080"), nodeToP)
	check(at(outside, "8080"), nodeAddr)

	// A master that runs no pods: the chain is gone with the table it
	// was part of, and nothing is masqueraded.
	env.Config.RunPods = false
	load()
	if got := run(nodeNS, "", "nft", "list", "table", "inet", FirewallTable); strings.Contains(got, "postrouting") || strings.Contains(got, "masquerade") {
		t.Errorf("a master without pods still masquerades:\n%s", got)
	}
	check(at(outside, "8080"), "")
	check(at(peerPod, "8080"), pod)
}
