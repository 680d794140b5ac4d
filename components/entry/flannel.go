package entry

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flannel-io/flannel/pkg/backend"
	"github.com/flannel-io/flannel/pkg/backend/vxlan"
	"github.com/flannel-io/flannel/pkg/subnet/kube"
)

// runFlannel is the pod network: flannel's Kubernetes subnet manager (the
// node's pod CIDR, allocated by kube-controller-manager, is its lease; peers
// are learnt from Node annotations) and flannel's VXLAN backend (the
// flannel.1 device, with a route, ARP and FDB entry per peer node). Instead of
// flannel's CNI plugin and subnet.env it writes the CNI configuration for the
// upstream bridge and host-local plugins directly: one file, nothing to
// re-read at every pod start.
func runFlannel(args []string) int {
	fs := flag.NewFlagSet("flannel", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the node")
	nodeName := fs.String("node-name", "", "this node's Kubernetes name")
	netConf := fs.String("net-conf", "", "flannel network config (JSON: Network, Backend)")
	address := fs.String("public-ip", "", "the node address VXLAN packets are sent from and to")
	cniConf := fs.String("cni-conf", "/etc/cni/net.d/10-kiln.conflist", "CNI configuration file to write")
	bridge := fs.String("bridge", "cni0", "name of the pods' bridge")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for name, v := range map[string]string{"kubeconfig": *kubeconfig, "node-name": *nodeName, "net-conf": *netConf, "public-ip": *address} {
		if v == "" {
			return usageError("flannel", fmt.Errorf("--%s is required", name))
		}
	}
	ext, err := externalInterface(*address)
	if err != nil {
		return usageError("flannel", err)
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	// The subnet manager reads the node name from the environment.
	os.Setenv("NODE_NAME", *nodeName)
	sm, err := kube.NewSubnetManager(ctx, "", *kubeconfig, "flannel.alpha.coreos.com", *netConf, true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "flannel: subnet manager: %v\n", err)
		return 1
	}
	config, err := sm.GetNetworkConfig(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "flannel: network config: %v\n", err)
		return 1
	}
	be, err := vxlan.New(sm, ext)
	if err != nil {
		fmt.Fprintf(os.Stderr, "flannel: vxlan: %v\n", err)
		return 1
	}
	var wg sync.WaitGroup
	// The node's pod CIDR comes from kube-controller-manager shortly after
	// the kubelet registers the node: wait for it rather than exit.
	var bn backend.Network
	for waited := false; ; waited = true {
		bn, err = be.RegisterNetwork(ctx, &wg, config)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "pod cidr not assigned") || ctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "flannel: registering network: %v\n", err)
			return 1
		}
		if !waited {
			fmt.Fprintf(os.Stderr, "flannel: waiting for node %s to get its pod CIDR\n", *nodeName)
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(2 * time.Second):
		}
	}
	sn := bn.Lease().Subnet
	if err := writeCNIConfig(*cniConf, *bridge, sn.String(), bn.MTU()); err != nil {
		fmt.Fprintf(os.Stderr, "flannel: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "flannel: node subnet %s, network %s, mtu %d, CNI config %s\n", sn, config.Network, bn.MTU(), *cniConf)

	wg.Add(1)
	go func() { defer wg.Done(); bn.Run(ctx) }()
	if err := sm.CompleteLease(ctx, bn.Lease(), &wg); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "flannel: lease: %v\n", err)
	}
	<-ctx.Done()
	wg.Wait()
	return 0
}

// externalInterface finds the interface holding the node address.
func externalInterface(addr string) (*backend.ExternalInterface, error) {
	ip := net.ParseIP(addr)
	if ip == nil || ip.To4() == nil {
		return nil, fmt.Errorf("--public-ip %q is not an IPv4 address", addr)
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for i := range ifaces {
		addrs, err := ifaces[i].Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return &backend.ExternalInterface{Iface: &ifaces[i], IfaceName: ifaces[i].Name, IfaceAddr: ip, ExtAddr: ip}, nil
			}
		}
	}
	return nil, fmt.Errorf("no interface has the node address %s", addr)
}

// writeCNIConfig writes the pods' network: a bridge with the node's subnet,
// the bridge as every pod's default gateway (service IPs are routed by
// kube-proxy on the node, other nodes' subnets by the VXLAN routes).
// ipMasq stays false: pods' connections out of the pod CIDR are
// masqueraded by one node-wide rule in kiln's nftables table
// (components/firewall.go, podEgressRules). The bridge's own would add
// rules per pod and masquerade everything outside this node's subnet, pod
// to pod across nodes included.
func writeCNIConfig(path, bridge, subnetCIDR string, mtu int) error {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "kiln",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      bridge,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"mtu":         mtu,
				"ipam": map[string]any{
					"type": "host-local",
					// Allocations live as long as the pods: in /run, so a
					// reboot does not leak them.
					"dataDir": "/run/cni/networks",
					"ranges":  [][]map[string]string{{{"subnet": subnetCIDR}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
