package node

import "slices"

// Component names. Each is at once the supervisor's name of a component
// (components.Component.Name), the node binary's "kiln-node component NAME"
// sub-command (components/entry), and, for the serving components, a key of
// the config's extraArgs. They live here, in the package both sides import,
// so the three cannot drift apart (components/entry's test checks it).
const (
	ComponentEtcd              = "etcd"
	ComponentAPIServer         = "kube-apiserver"
	ComponentControllerManager = "kube-controller-manager"
	ComponentScheduler         = "kube-scheduler"
	ComponentContainerd        = "containerd"
	ComponentKubelet           = "kubelet"
	ComponentKubeProxy         = "kube-proxy"
	ComponentFlannel           = "flannel"
	// ComponentCSRApprover approves kubelet serving certificates whose
	// names match the node asking.
	ComponentCSRApprover = "csr-approver"
	// ComponentNetworkPolicy enforces NetworkPolicy objects on the node
	// (kube-network-policies).
	ComponentNetworkPolicy = "network-policy"
	// ComponentAPILB is a worker's node-local load balancer in front of
	// the masters' API servers (127.0.0.1:6444).
	ComponentAPILB = "api-lb"
	// ComponentVIP holds the API's virtual IP (controlPlane.vip) on the
	// master that holds its Lease.
	ComponentVIP = "vip"
	// ComponentMetricsServer serves the resource metrics API (kubectl top)
	// on a master (metrics-server).
	ComponentMetricsServer = "metrics-server"
	// ComponentLocalStorage provisions PersistentVolumes of the
	// StorageClass "local" on the state disk of the pod's node.
	ComponentLocalStorage = "local-storage"

	// Tasks: they run to completion and take no extraArgs.
	ComponentAddons       = "addons"
	ComponentJoin         = "join"
	ComponentImportImages = "import-images"
	// ComponentFirewall loads kiln's own nftables table (inet
	// kiln-firewall) before the other components start.
	ComponentFirewall = "firewall"
)

// knownComponents are the components whose flags extraArgs may override:
// the serving ones, not the tasks.
var knownComponents = []string{
	ComponentEtcd, ComponentAPIServer, ComponentControllerManager, ComponentScheduler,
	ComponentKubelet, ComponentKubeProxy, ComponentContainerd, ComponentFlannel,
	ComponentCSRApprover, ComponentNetworkPolicy, ComponentAPILB, ComponentVIP,
	ComponentMetricsServer, ComponentLocalStorage,
}

// KnownComponents lists the components whose flags extraArgs may override,
// in a fixed order. The slice is the caller's.
func KnownComponents() []string { return slices.Clone(knownComponents) }
