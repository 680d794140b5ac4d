package components

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/knftables"

	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/pki"
)

// Firewall is kiln's own nftables table on every node, table inet
// kiln-firewall. Its input chain:
//
//   - nothing from the pod CIDR reaches the node's etcd (client and peer),
//     controller-manager, scheduler or kiln status ports: on a master all
//     five, on a worker the status port (nothing else of those listens
//     there);
//   - etcd answers only loopback and the masters' addresses
//     (etcdClientAddresses: this one and controlPlane.masters);
//   - everything else is left alone: the API server's port (pods reach it
//     through the kubernetes Service, which kube-proxy DNATs to a master's
//     address:6443; the input hook sees the DNATed port, so a Service
//     pointed at etcd is refused too), the kubelet's (the API server
//     reaches it from a master's address for logs and exec), NodePorts.
//
// On a node that runs pods, its postrouting chain (nat) masquerades pods'
// connections that leave the pod CIDR (podEgressRules): a router, a
// registry on the nodes' network or QEMU's NAT has no route back to the pod
// CIDR. Pod to pod keeps the pods' addresses. It is here, in the one table
// kiln owns, rather than in the CNI bridge's ipMasq (kept false in
// components/entry/flannel.go): one node-wide rule, loaded before any pod
// starts, replaced with the rest of the table.
//
// Its Prepare writes the table, so it is in force before any component
// starts; it fails the node's bring-up when it cannot (no component runs
// unguarded). The table is replaced as a whole, in one nft transaction
// (add, delete, add), at every start; no other table is touched
// (kube-proxy's, the network policies'). The firewall task then loads the
// same ruleset again (DATA/config/firewall.nft) and logs what is in force.
//
// A node whose address is loopback (host mode: kiln-node up on a
// workstation) has nothing on a network to guard and gets no firewall:
// kiln never changes a workstation's nftables.
type Firewall struct{}

var _ Component = Firewall{}
var _ Conditional = Firewall{}
var _ Task = Firewall{}

// FirewallTable is the name of kiln's nftables table (family inet).
const FirewallTable = "kiln-firewall"

const firewallRuleset = "config/firewall.nft"

func (Firewall) Name() string        { return node.ComponentFirewall }
func (Firewall) Roles() []node.Role  { return []node.Role{node.RoleMaster, node.RoleWorker} }
func (Firewall) DependsOn() []string { return nil }
func (Firewall) Task()               {}

// Enabled: every node on a network address.
func (Firewall) Enabled(cfg *node.Config) bool {
	ip, err := netip.ParseAddr(cfg.Address)
	return err == nil && !ip.IsLoopback()
}

func (Firewall) Flags(env *Env) map[string]string {
	return map[string]string{"ruleset": env.Path(firewallRuleset), "table": FirewallTable}
}

// Prepare loads the table (knftables runs the image's nft) and writes the
// ruleset it loaded for the firewall task and for people to read.
func (Firewall) Prepare(env *Env) error {
	nft, err := knftables.New(knftables.InetFamily, FirewallTable)
	if err != nil {
		return fmt.Errorf("firewall: nftables: %w", err)
	}
	tx := nft.NewTransaction()
	if err := firewallRules(tx, env); err != nil {
		return err
	}
	if err := pki.WriteFile(env.Path(firewallRuleset), []byte(tx.String()), false); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("firewall: loading table inet %s: %w", FirewallTable, err)
	}
	return nil
}

// masterAddresses are the masters' node addresses: controlPlane.masters,
// and always this node's on a master (etcd peers and the API servers,
// etcd's only clients). A variable for the tests.
var masterAddresses = func(env *Env) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil && !slices.Contains(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	if env.Config.Role == node.RoleMaster {
		add(env.Config.Address)
		for _, m := range env.Config.ControlPlane.Masters {
			add(m)
		}
	}
	return out
}

// etcdClientAddresses are the sources etcd's client and peer ports
// accept: loopback and the masters.
func etcdClientAddresses(env *Env) []netip.Prefix {
	out := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	for _, a := range masterAddresses(env) {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

// podGuardedPorts are the node's ports pods may not reach: on a master
// etcd's, the controller-manager's and the scheduler's (these two listen
// on 127.0.0.1 only: this is a second fence), and on every node kiln's
// status port.
func podGuardedPorts(env *Env) []int {
	var ports []int
	if env.Config.Role == node.RoleMaster {
		p := env.Config.Ports
		ports = append(ports, p.EtcdClient, p.EtcdPeer, p.ControllerManager, p.Scheduler)
	}
	ports = append(ports, nodeapi.Port)
	slices.Sort(ports)
	return slices.Compact(ports)
}

// firewallRules adds the whole table to tx: it is created if missing,
// deleted and created again, all in tx (nft applies a transaction
// atomically), so it never holds a rule of an earlier start and is never
// missing in between.
func firewallRules(tx *knftables.Transaction, env *Env) error {
	pods, err := netip.ParsePrefix(env.Cluster.PodCIDR)
	if err != nil {
		return fmt.Errorf("firewall: pod CIDR %q: %w", env.Cluster.PodCIDR, err)
	}
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})
	tx.Add(&knftables.Table{
		Comment: knftables.PtrTo("kiln: what pods and other hosts may reach on this node, and pods' way out (components/firewall.go)"),
	})
	tx.Add(&knftables.Chain{
		Name:     "input",
		Type:     knftables.PtrTo(knftables.FilterType),
		Hook:     knftables.PtrTo(knftables.InputHook),
		Priority: knftables.PtrTo(knftables.FilterPriority),
		Policy:   knftables.PtrTo(knftables.AcceptPolicy),
		Comment:  knftables.PtrTo("traffic to this node's own addresses"),
	})
	tx.Add(&knftables.Rule{
		Chain:   "input",
		Rule:    knftables.Concat(ipFamily(pods), "saddr", pods.Masked().String(), "tcp dport", portSet(podGuardedPorts(env)), "reject with tcp reset"),
		Comment: knftables.PtrTo("pods: not etcd, the controller-manager, the scheduler or kiln's status port"),
	})
	if env.Config.Role == node.RoleMaster {
		masterInputRules(tx, env)
	}
	if env.Config.RunsPods() {
		podEgressRules(tx, env, pods)
	}
	return nil
}

// masterInputRules: etcd's ports answer only loopback and the masters.
func masterInputRules(tx *knftables.Transaction, env *Env) {
	etcd := portSet([]int{env.Config.Ports.EtcdClient, env.Config.Ports.EtcdPeer})
	for _, fam := range []string{"ip", "ip6"} {
		var srcs []string
		for _, p := range etcdClientAddresses(env) {
			if ipFamily(p) == fam {
				srcs = append(srcs, prefixString(p))
			}
		}
		if len(srcs) > 0 {
			tx.Add(&knftables.Rule{
				Chain: "input",
				Rule:  knftables.Concat("tcp dport", etcd, fam, "saddr", "{ "+strings.Join(srcs, ", ")+" }", "accept"),
			})
		}
	}
	tx.Add(&knftables.Rule{
		Chain:   "input",
		Rule:    knftables.Concat("tcp dport", etcd, "reject with tcp reset"),
		Comment: knftables.PtrTo("etcd: loopback and the masters only"),
	})
}

// podEgressRules adds the postrouting chain of a node that runs pods: a
// pod's connection to an address outside the pod CIDR leaves with this
// node's address (masquerade: the address of the interface it leaves by),
// as flannel's --ip-masq and most distributions do. Not masqueraded:
//
//   - pod to pod, across nodes too (the inner packet of flannel's VXLAN):
//     the pods, NetworkPolicy and kube-network-policies on the other node
//     see the real pod address. A Service's ClusterIP is DNATed by
//     kube-proxy before postrouting, so it is judged by the endpoint it
//     goes to; kube-network-policies' postrouting chain (priority srcnat-5)
//     sees the packet before this one (srcnat) changes it;
//   - multicast;
//   - another node's guarded ports (kiln's status port on every node, the
//     masters' etcd, controller-manager and scheduler ports): that node's
//     input chain refuses the pod CIDR, which it would no longer see once
//     masqueraded; and on a master the masqueraded source would be a
//     master's address, which etcd's rule admits. Such a connection keeps
//     the pod's address and is refused there, as without masquerade. The
//     status port is excepted to every address (a node does not know all
//     the others'), so a pod's connection to port 10260 outside the
//     cluster is not masqueraded either.
//
// Connections from other sources (the node's own, NodePorts, which
// kube-proxy masquerades itself when it must) are left alone. fully-random
// picks the source port at random, as kube-proxy and flannel do, to avoid
// conntrack insertion races between pods' connections.
//
// The cluster has one pod CIDR, of one family (configs/cluster: no
// dual-stack); the rules are written for that family.
func podEgressRules(tx *knftables.Transaction, env *Env, pods netip.Prefix) {
	fam := ipFamily(pods)
	multicast := "224.0.0.0/4"
	if fam == "ip6" {
		multicast = "ff00::/8"
	}
	tx.Add(&knftables.Chain{
		Name:     "postrouting",
		Type:     knftables.PtrTo(knftables.NATType),
		Hook:     knftables.PtrTo(knftables.PostroutingHook),
		Priority: knftables.PtrTo(knftables.SNATPriority),
		Comment:  knftables.PtrTo("pods' connections out of the pod CIDR leave with this node's address"),
	})
	cidr := pods.Masked().String()
	tx.Add(&knftables.Rule{
		Chain:   "postrouting",
		Rule:    knftables.Concat(fam, "daddr", cidr, "return"),
		Comment: knftables.PtrTo("pod to pod, across nodes too: the pods' own addresses"),
	})
	tx.Add(&knftables.Rule{
		Chain:   "postrouting",
		Rule:    knftables.Concat(fam, "daddr", multicast, "return"),
		Comment: knftables.PtrTo("multicast"),
	})
	tx.Add(&knftables.Rule{
		Chain:   "postrouting",
		Rule:    knftables.Concat("tcp dport", portSet([]int{nodeapi.Port}), "return"),
		Comment: knftables.PtrTo("kiln's status port on any node: its firewall sees the pod's address"),
	})
	var masters []string
	for _, a := range masterAddresses(env) {
		if p := netip.PrefixFrom(a, a.BitLen()); ipFamily(p) == fam {
			masters = append(masters, prefixString(p))
		}
	}
	if len(masters) > 0 {
		p := env.Config.Ports
		tx.Add(&knftables.Rule{
			Chain: "postrouting",
			Rule: knftables.Concat(fam, "daddr", "{ "+strings.Join(masters, ", ")+" }",
				"tcp dport", portSet([]int{p.EtcdClient, p.EtcdPeer, p.ControllerManager, p.Scheduler}), "return"),
			Comment: knftables.PtrTo("the masters' guarded ports: their firewall sees the pod's address"),
		})
	}
	tx.Add(&knftables.Rule{
		Chain:   "postrouting",
		Rule:    knftables.Concat(fam, "saddr", cidr, "masquerade fully-random"),
		Comment: knftables.PtrTo("pods to outside the pod CIDR: this node's address"),
	})
}

// ipFamily is the nft payload keyword of a prefix's family.
func ipFamily(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "ip"
	}
	return "ip6"
}

// prefixString is an address alone when the prefix is one address.
func prefixString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.Masked().String()
}

func portSet(ports []int) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	return "{ " + strings.Join(s, ", ") + " }"
}
