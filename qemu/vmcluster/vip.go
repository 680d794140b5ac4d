package vmcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/nodeclient"
)

// DefaultVIP is the API's virtual IP of a cluster with several masters
// (kiln cluster up --vip auto): on the cluster's L2, below the nodes'
// addresses (they start at .10 and grow upwards as workers are added).
const DefaultVIP = subnetPrefix + "5"

// checkVIP checks Options.VIP: an address of the cluster's L2 that no VM
// has now or gets later, with masters to pass it between.
func checkVIP(o *Options) error {
	if o.VIP == "" {
		return nil
	}
	if o.Masters < 2 {
		return fmt.Errorf("vip %s: a virtual IP moves between masters: it needs several (--masters 3)", o.VIP)
	}
	ip, err := netip.ParseAddr(o.VIP)
	l2 := netip.MustParsePrefix(subnetPrefix + "0/24")
	if err != nil || !l2.Contains(ip) || ip.As4()[3] < 1 || ip.As4()[3] >= masterHost {
		return fmt.Errorf("vip %q: want an address of the cluster's network %s below the nodes' (%s1 to %s%d), e.g. %s", o.VIP, l2, subnetPrefix, subnetPrefix, masterHost-1, DefaultVIP)
	}
	return nil
}

// vipPoll is how often the host asks the masters which holds the VIP.
// The endpoint sends new connections to the holder it knew last: for up
// to this long after a takeover they go to the other masters in turn,
// which serve them as well.
const vipPoll = 2 * time.Second

// watchVIP asks every running master's node API, every vipPoll, whether
// it holds the VIP, and keeps the answer for the host endpoint. Until
// ctx ends.
func (c *Cluster) watchVIP(ctx context.Context) {
	last := ""
	for {
		var holders []string
		for _, n := range c.Masters() {
			held := false
			if vm := n.VM(); vm != nil {
				select {
				case <-vm.Done():
				default:
					qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					st, err := c.NodeStatus(qctx, n)
					cancel()
					held = err == nil && st.VIP != nil && st.VIP.Held
				}
			}
			n.mu.Lock()
			n.holdsVIP = held
			n.mu.Unlock()
			if held {
				holders = append(holders, n.Name)
			}
		}
		if now := strings.Join(holders, ", "); now != last && ctx.Err() == nil {
			if now == "" {
				c.say("VIP %s: no master holds it", c.opts.VIP)
			} else {
				c.say("VIP %s: held by %s", c.opts.VIP, now)
			}
			last = now
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(vipPoll):
		}
	}
}

// HoldsVIP reports whether the master held the VIP at the host's last
// look (every 2 s; false on a cluster without one).
func (n *Node) HoldsVIP() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.holdsVIP
}

// VIP is the virtual IP the masters pass between them, "" for none.
func (c *Cluster) VIP() string { return c.opts.VIP }

// NodeStatus reads a master's status from its node API, through its
// forward, with the cluster's admin credentials, checking that the
// master's certificate is the cluster CA's for its name.
func (c *Cluster) NodeStatus(ctx context.Context, n *Node) (*nodeapi.Status, error) {
	if n.NodeAPIPort == 0 {
		return nil, fmt.Errorf("%s has no node API forward (a worker?)", n.Name)
	}
	return readStatus(ctx, c.nodeAPI, forward(n.Name, n.NodeAPIPort))
}

// ReadNodeStatus reads the status of the node whose node API is
// forwarded to the host's port, with a kiln kubeconfig's admin
// credentials (kiln cluster status); any node's certificate of the
// cluster CA is accepted (the caller knows the port, not the name).
func ReadNodeStatus(ctx context.Context, kubeconfig string, port int) (*nodeapi.Status, error) {
	c, err := nodeclient.FromKubeconfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	defer c.CloseIdle()
	return readStatus(ctx, c, forward("", port))
}

// forward is a node API forwarded to the host's loopback port.
func forward(name string, port int) nodeclient.Target {
	return nodeclient.Target{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Name: name}
}

// maxStatus caps a status read into memory (kiln status's cap).
const maxStatus = 8 << 20

func readStatus(ctx context.Context, c *nodeclient.Client, t nodeclient.Target) (*nodeapi.Status, error) {
	body, err := c.Get(ctx, t, nodeapi.PathStatus, maxStatus)
	if err != nil {
		return nil, err
	}
	var st nodeapi.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("node API %s: %w", t, err)
	}
	return &st, nil
}
