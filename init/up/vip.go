package up

import (
	"fmt"
	"net"
	"net/netip"

	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
)

// vipAnnotation fills a master's status with the API's virtual IP
// (controlPlane.vip) and whether this node holds it: whether the address
// is on one of its interfaces, read at every status. That is what the
// network sees, and it is right even when the vip component has died
// with the address still on (its next start takes it off). nil when the
// node competes for no VIP.
func vipAnnotation(cfg *node.Config, addrs func() ([]net.Addr, error)) func(*nodeapi.Status) {
	vip, ok := cfg.VIPAddr()
	if !ok || cfg.Role != node.RoleMaster {
		return nil
	}
	return func(st *nodeapi.Status) {
		v := &nodeapi.VIPStatus{Address: vip.String()}
		as, _ := addrs() // none readable: not held, as far as anyone can tell
		for _, a := range as {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == vip {
					v.Held = true
				}
			}
		}
		st.VIP = v
	}
}

// checkVIPRange refuses a virtual IP inside the cluster's service or pod
// range, for the reason checkAddressRanges gives for a node's address.
func checkVIPRange(cfg *node.Config, cl *cluster.Cluster) error {
	vip, ok := cfg.VIPAddr()
	if !ok {
		return nil
	}
	for _, r := range []struct{ name, cidr string }{{"serviceCIDR", cl.ServiceCIDR}, {"podCIDR", cl.PodCIDR}} {
		if p, err := netip.ParsePrefix(r.cidr); err == nil && p.Contains(vip) {
			return fmt.Errorf("controlPlane.vip %s is inside the cluster's %s %s (%s): choose a free address on the masters' network outside it",
				vip, r.name, r.cidr, cl.Dir+"/cluster.yaml")
		}
	}
	return nil
}
