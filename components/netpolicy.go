package components

import (
	"context"
	"fmt"

	"kiln/configs/node"
)

// NetworkPolicy enforces NetworkPolicy objects on the node: upstream
// kube-network-policies (sigs.k8s.io/kube-network-policies, see
// components/entry), which the pod network (flannel, bridge) does not do.
// It keeps its own nftables table (inet kube-network-policies) whose
// postrouting chain sends the first packet of each new connection to or
// from a local pod that a policy selects to an nfqueue; the controller
// reads it and says accept or drop from the policies. Other pods' traffic
// never leaves the kernel. It is fail-closed: while it is down, new
// connections of the selected pods are dropped, never let through.
//
// It runs with the node's own credentials; the add-ons let the
// system:nodes group list and watch pods, namespaces and network policies
// (kiln:network-policy). Admin network policies (alpha, CRDs kiln does not
// install) stay off. Its /healthz, on loopback only beside /metrics, says
// ok once its view of pods, namespaces and policies is synced.
type NetworkPolicy struct{}

var _ Component = NetworkPolicy{}
var _ Prober = NetworkPolicy{}
var _ Conditional = NetworkPolicy{}
var _ Listener = NetworkPolicy{}

// networkPolicyPort serves /healthz and /metrics on 127.0.0.1 (upstream's
// metrics port).
const networkPolicyPort = 9080

func (NetworkPolicy) Name() string                  { return node.ComponentNetworkPolicy }
func (NetworkPolicy) Roles() []node.Role            { return []node.Role{node.RoleMaster, node.RoleWorker} }
func (NetworkPolicy) Enabled(cfg *node.Config) bool { return cfg.RunsPods() }
func (NetworkPolicy) DependsOn() []string           { return []string{node.ComponentKubelet} }
func (NetworkPolicy) Prepare(*Env) error            { return nil }
func (NetworkPolicy) Listens(*Env) []string {
	return []string{hostPort("127.0.0.1", networkPolicyPort)}
}

func (NetworkPolicy) Flags(env *Env) map[string]string {
	return map[string]string{
		"kubeconfig":        KubeletKubeconfig(env),
		"hostname-override": env.NodeName,
		"bind-address":      hostPort("127.0.0.1", networkPolicyPort),
	}
}

func (NetworkPolicy) Ready(ctx context.Context, env *Env) error {
	return probeHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/healthz", networkPolicyPort), "ok")
}
