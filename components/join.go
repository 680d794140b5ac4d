package components

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"

	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/pki"
)

// Join is a worker's first step: it learns the cluster CA from the master
// and checks it against the hash pinned in the worker's image, checks that
// the master accepts the bootstrap token, and gets the kubelet's client
// certificate for the node's name, proved with the node's identity (a name
// another machine holds is refused). While the master is not there yet
// (unreachable, its API server not ready, the token or the join RBAC not
// applied yet by its add-ons, the request not decided yet) it waits within
// one run, polling every second or two, for up to two minutes; then it
// ends with the reason as its last line (on the console), and the
// supervisor starts it again a second later, the run having been long.
// What time does not cure (a wrong CA, a name another machine holds) ends
// the run at once, and the supervisor retries with backoff
// (components/entry/join.go).
type Join struct{}

var _ Component = Join{}
var _ Task = Join{}

func (Join) Name() string        { return node.ComponentJoin }
func (Join) Roles() []node.Role  { return []node.Role{node.RoleWorker} }
func (Join) DependsOn() []string { return []string{node.ComponentAPILB} }
func (Join) Task()               {}
func (Join) Prepare(env *Env) error {
	if err := mkdirs(env.Path("pki"), env.Path(kubeletDir), env.Path("identity")); err != nil {
		return err
	}
	return writeNodeSecret(env)
}

func (Join) Flags(env *Env) map[string]string {
	return map[string]string{
		"endpoint":      apiEndpoint(env),
		"ca-hash":       env.Cluster.CAHash,
		"token-file":    cluster.PathsFor(env.Cluster.Dir).BootstrapToken,
		"cluster-name":  env.Cluster.Name,
		"ca-out":        env.Path(apiCACert),
		"node-name":     env.NodeName,
		"identity-file": env.Path(nodeSecretFile),
		"kubeconfig":    KubeletKubeconfig(env),
		"cert-dir":      env.Path(kubeletDir, "pki"),
		// The masters behind the endpoint (the API load balancer), for
		// the messages about reaching them.
		"masters": strings.Join(apiLBSeeds(env), ","),
	}
}

// nodeSecretFile holds the per-node secret the node's identity key is
// derived from (components/approve): the name it joins with is bound to
// that key at its first join.
const nodeSecretFile = "identity/node-secret"

// writeNodeSecret puts the node's secret in place, from (first that
// exists) the node config's nodeSecret (kiln pxe serve and kiln cluster
// give each machine one), the file of an earlier boot (a state disk keeps
// it), or a new random one when the data directory is on a state disk. A
// diskless node with no nodeSecret derives one from the bootstrap token
// and its name, so it can rejoin after every reboot; but then any holder
// of the token can take its name, and the console says so.
func writeNodeSecret(env *Env) error {
	path := env.Path(nodeSecretFile)
	if env.Config.NodeSecret != "" {
		return pki.WriteFile(path, []byte(env.Config.NodeSecret), true)
	}
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if env.Config.Storage.StateDisk != "" {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		return pki.WriteFile(path, []byte(hex.EncodeToString(b)), true)
	}
	tok, err := pki.ReadFile(cluster.PathsFor(env.Cluster.Dir).BootstrapToken)
	if err != nil {
		return fmt.Errorf("deriving the node secret: %w", err)
	}
	sum := sha256.Sum256([]byte("kiln node secret from the token\x00" + strings.TrimSpace(string(tok)) + "\x00" + env.NodeName))
	env.Warn("node %s has no nodeSecret and no state disk: its identity comes from the bootstrap token, so any holder of the token can take its name (set nodeSecret in its node config; kiln pxe serve and kiln cluster do)", env.NodeName)
	return pki.WriteFile(path, []byte(hex.EncodeToString(sum[:])), true)
}

// Addons is a master's task of putting the cluster's own objects in place
// once the API serves: the bootstrap token's Secret, the RBAC bindings that
// let workers join and their CSRs be approved, the node components'
// permissions, and CoreDNS (Deployment and the kube-dns Service). What a
// worker's join needs is applied first, on its own (addons.JoinFirst).
// Applying is idempotent (server-side apply), so it runs at every boot.
type Addons struct{}

var _ Component = Addons{}
var _ Task = Addons{}

const addonsKubeconfig = "kubeconfig/kiln-addons.conf"

func (Addons) Name() string             { return node.ComponentAddons }
func (Addons) Roles() []node.Role       { return []node.Role{node.RoleMaster} }
func (Addons) DependsOn() []string      { return []string{node.ComponentAPIServer} }
func (Addons) Task()                    {}
func (a Addons) Prepare(env *Env) error { return issueAll(env, a.Certs(env)) }

// Certs: its client certificate; a task, which reads it when it runs
// (at every boot).
func (Addons) Certs(env *Env) []Cert {
	return []Cert{clientKubeconfig(env, env.Path(addonsKubeconfig), "kiln:addons", []string{"system:masters"}, "addons (a task: when it runs, at boot)")}
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
		"master-name":    env.NodeName,
		"ca-file":        env.Path(apiCACert),
		// Every master's API server reaches its own metrics-server on
		// loopback at this port (components/metricsserver.go).
		"metrics-server-port": strconv.Itoa(env.Config.Ports.MetricsServer),
	}
}
