package components

import (
	"kiln/configs/cluster"
	"kiln/configs/node"
)

// Join is a worker's first step: it learns the cluster CA from the master
// and checks it against the hash pinned in the worker's image, then checks
// that the master accepts the bootstrap token, and writes the kubelet's
// bootstrap kubeconfig. Errors (master unreachable, wrong CA, token refused)
// are printed on the console and the supervisor retries with backoff.
type Join struct{}

var _ Component = Join{}
var _ Task = Join{}

func (Join) Name() string        { return node.ComponentJoin }
func (Join) Roles() []node.Role  { return []node.Role{node.RoleWorker} }
func (Join) DependsOn() []string { return nil }
func (Join) Task()               {}
func (Join) Prepare(env *Env) error {
	return mkdirs(env.Path("pki"), env.Path(kubeletDir))
}

func (Join) Flags(env *Env) map[string]string {
	return map[string]string{
		"endpoint":             apiEndpoint(env),
		"ca-hash":              env.Cluster.CAHash,
		"token-file":           cluster.PathsFor(env.Cluster.Dir).BootstrapToken,
		"cluster-name":         env.Cluster.Name,
		"ca-out":               env.Path(apiCACert),
		"bootstrap-kubeconfig": env.Path(kubeletBootstrapConfig),
	}
}

// Addons is a master's task of putting the cluster's own objects in place
// once the API serves: the bootstrap token's Secret, the RBAC bindings that
// let workers join and their CSRs be approved, the node components'
// permissions, and CoreDNS (Deployment and the kube-dns Service). Applying
// is idempotent (server-side apply), so it runs at every boot.
type Addons struct{}

var _ Component = Addons{}
var _ Task = Addons{}

const addonsKubeconfig = "kubeconfig/kiln-addons.conf"

func (Addons) Name() string        { return node.ComponentAddons }
func (Addons) Roles() []node.Role  { return []node.Role{node.RoleMaster} }
func (Addons) DependsOn() []string { return []string{node.ComponentAPIServer} }
func (Addons) Task()               {}
func (Addons) Prepare(env *Env) error {
	return writeKubeconfig(env, env.Path(addonsKubeconfig), "kiln:addons", []string{"system:masters"})
}

func (Addons) Flags(env *Env) map[string]string {
	master := ""
	if env.Config.RunsPods() {
		master = env.NodeName
	}
	return map[string]string{
		"kubeconfig":     env.Path(addonsKubeconfig),
		"token-file":     cluster.PathsFor(env.Cluster.Dir).BootstrapToken,
		"cluster-dns":    env.Cluster.ClusterDNS,
		"cluster-domain": env.Cluster.ClusterDomain,
		"master-node":    master,
	}
}
