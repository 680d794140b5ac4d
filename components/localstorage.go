package components

import (
	"strconv"

	"kiln/configs/node"
	"kiln/configs/nodeapi"
)

// LocalStorage is a master's provisioner of the StorageClass "local",
// the cluster's default (components/addons/storage.yaml): a claim's
// PersistentVolume is a directory on the state disk of the node its pod
// runs on, DATA/volumes/pvc-UID, reached by hostPath and bound to that
// node by its node affinity (components/localstorage, with
// sigs.k8s.io/sig-storage-lib-external-provisioner). Every master runs
// it; one at a time provisions, the holder of the Lease
// kube-system/kiln.dev-local.
//
// The volume's node makes its directory, asked over its API (PUT
// /volumes/NAME), before the PersistentVolume is made: mode 0777, so that
// a pod that does not run as root may write to it (the kubelet would make
// a missing hostPath directory root's, 0755, and a pod's fsGroup does not
// apply to a hostPath). A node with a state disk says so with the label
// StateDiskLabel (the kubelet sets it when it registers the node), which
// spares the provisioner asking the others; the node's own answer is the
// one that counts: one without a state disk refuses (409), and the claim
// is sent back to the scheduler with an event that says why. A volume's
// data is removed from its node, over the node's API (DELETE
// /volumes/NAME), before its PersistentVolume is deleted.
type LocalStorage struct{}

var _ Component = LocalStorage{}

const localStorageKubeconfig = "kubeconfig/kiln-local-storage.conf"

// localStorageUser is the provisioner's identity; components/addons
// (storage.yaml) grants it its rights. Its certificate also carries the
// group nodeapi.VolumesGroup: the same certificate is its client
// certificate to the nodes' API, which lets that group make and remove
// volumes and nothing else.
const localStorageUser = "kiln:local-storage"

// StateDiskLabel is the node label that says the node keeps its data on
// a state disk (storage.stateDisk): the only nodes local volumes go to
// (the node itself confirms it when asked to make a volume). Its value is
// "true".
const StateDiskLabel = "kiln.dev/state-disk"

func (LocalStorage) Name() string        { return node.ComponentLocalStorage }
func (LocalStorage) Roles() []node.Role  { return []node.Role{node.RoleMaster} }
func (LocalStorage) DependsOn() []string { return []string{node.ComponentAPIServer} }

func (l LocalStorage) Prepare(env *Env) error { return issueAll(env, l.Certs(env)) }

// Certs: its client certificate, to the API (client-go) and to the
// nodes' API (nodeclient): both load it at each handshake.
func (LocalStorage) Certs(env *Env) []Cert {
	return []Cert{clientKubeconfig(env, env.Path(localStorageKubeconfig), localStorageUser, []string{nodeapi.VolumesGroup},
		"local-storage, to the API and to the nodes' API (at each handshake)")}
}

// Flags: the kubeconfig is also the provisioner's credentials to the
// nodes' API (its client certificate, and the cluster CA that signed the
// nodes' serving certificates). The volumes' directory is this master's:
// kiln assumes every node's data directory is the same (it is in every
// image: /var/lib/kiln), since the PersistentVolume names it before the
// pod runs there.
func (LocalStorage) Flags(env *Env) map[string]string {
	return map[string]string{
		"kubeconfig":    env.Path(localStorageKubeconfig),
		"volumes-dir":   VolumesDir(env),
		"node-api-port": strconv.Itoa(nodeapi.Port),
	}
}

// VolumesDir is where the node keeps the data of its local volumes.
func VolumesDir(env *Env) string { return env.Path(nodeapi.VolumesDir) }

// NodeAPIServingFiles are the certificate and key the node API serves
// with once they exist: the kubelet's serving certificate, which the
// cluster CA signed for the node's own name and addresses (a master
// issues it itself, a worker's kubelet asks for it and kiln's
// csr-approver checks its names), so that a client such as the
// local-storage provisioner can verify it is talking to that node. A
// node without a kubelet has none; the node API then serves a
// self-signed certificate.
func NodeAPIServingFiles(env *Env) (cert, key string) {
	if env.Config.Role == node.RoleMaster {
		return env.Path(kubeletServingCert), env.Path(kubeletServingKey)
	}
	// The kubelet's rotated certificate and key, in one file.
	p := env.Path(kubeletDir, "pki", "kubelet-server-current.pem")
	return p, p
}
