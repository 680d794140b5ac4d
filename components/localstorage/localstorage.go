// Package localstorage is the provisioner of the StorageClass "local"
// (components.LocalStorage): a claim's volume is a directory on the state
// disk of the node its pod was scheduled to, DATA/volumes/pvc-UID, which
// that node makes when asked through its API (mode 0777, so that a pod of
// any user may write to it), mounted by the kubelet as a hostPath, and
// which the PersistentVolume's node affinity keeps the pod on. The claim's
// lifecycle (which claims to provision, binding, events, retries, the
// Lease that lets one master of several provision) is
// sigs.k8s.io/sig-storage-lib-external-provisioner's; this package decides
// what a volume is, has the node make its directory before the
// PersistentVolume exists, and has it remove the directory, with the
// data, when the PersistentVolume is deleted.
package localstorage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"kiln/components"
	"kiln/configs/nodeapi"
)

const (
	// ProvisionerName is the StorageClass's provisioner.
	ProvisionerName = "kiln.dev/local"
	// ClassName is the StorageClass kiln makes the cluster's default.
	ClassName = "local"
	// StateDiskLabel is the label of the nodes that keep their data on a
	// state disk (set by their kubelet).
	StateDiskLabel = components.StateDiskLabel
	// NodeAnnotation names the node that holds a volume's data.
	NodeAnnotation = "kiln.dev/node"
	// hostnameLabel is the label a volume's node affinity matches.
	hostnameLabel = "kubernetes.io/hostname"
)

// Nodes makes and removes a volume's directory on the node that holds
// it (NodeAPI).
type Nodes interface {
	// MakeVolume makes the directory; a node that has no state disk
	// refuses with a *StatusError of code 409 (Conflict) that says so.
	MakeVolume(ctx context.Context, node *corev1.Node, name string) error
	RemoveVolume(ctx context.Context, node *corev1.Node, name string) error
}

// Provisioner provisions and deletes the volumes of the StorageClass
// "local".
type Provisioner struct {
	Client kubernetes.Interface
	// VolumesDir is where every node keeps its volumes
	// (components.VolumesDir: DATA/volumes).
	VolumesDir string
	Nodes      Nodes
}

var _ controller.Provisioner = (*Provisioner)(nil)

// noStateDisk is the refusal of a node without a state disk: the claim
// goes back to the scheduler, which may pick another node for its pod.
type noStateDisk struct{ node string }

func (e noStateDisk) Error() string {
	return fmt.Sprintf("node %s has no state disk: PersistentVolumes of class %q keep their data on a node's state disk (storage.stateDisk in the node config), and this node keeps its data in RAM; run the pod on a node that has one (nodeSelector %s: \"true\")",
		e.node, ClassName, StateDiskLabel)
}

// Provision makes the PersistentVolume of a claim whose pod was scheduled
// to o.SelectedNodeName, once that node has made its directory. The
// library turns an error into a ProvisioningFailed event on the claim,
// with the error's text.
//
// Whether the node has a state disk is asked twice: its label
// (StateDiskLabel), which refuses a node without one at no cost, then the
// node itself, whose answer is the one that counts (a label set at the
// kubelet's registration may outlive a change of the node's config).
func (p *Provisioner) Provision(ctx context.Context, o controller.ProvisionOptions) (*corev1.PersistentVolume, controller.ProvisioningState, error) {
	if o.SelectedNodeName == "" {
		return nil, controller.ProvisioningFinished, fmt.Errorf("claim %s/%s has no node: volumes of class %q are made on the node of the first pod that uses them (volumeBindingMode: WaitForFirstConsumer in its StorageClass %q)",
			o.PVC.Namespace, o.PVC.Name, ClassName, o.StorageClass.Name)
	}
	node, err := p.Client.CoreV1().Nodes().Get(ctx, o.SelectedNodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, controller.ProvisioningReschedule, fmt.Errorf("node %s is not in the cluster (any more): choosing another node for the claim's pod", o.SelectedNodeName)
	}
	if err != nil {
		return nil, controller.ProvisioningNoChange, fmt.Errorf("reading node %s: %w", o.SelectedNodeName, err)
	}
	pv, err := BuildPV(o, node, p.VolumesDir)
	if errors.As(err, new(noStateDisk)) {
		// Back to the scheduler: in a cluster with nodes of both kinds
		// it may pick one with a state disk next time (a pod can ask
		// for one: nodeSelector kiln.dev/state-disk: "true").
		return nil, controller.ProvisioningReschedule, err
	}
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	err = p.Nodes.MakeVolume(ctx, node, o.PVName)
	var answer *StatusError
	switch {
	case err == nil:
		return pv, controller.ProvisioningFinished, nil
	case errors.As(err, &answer) && answer.Code == http.StatusConflict:
		// No state disk after all: back to the scheduler, as above, with
		// the node's own words ("node X has no state disk: ...") for the
		// event.
		if answer.Message == "" {
			return nil, controller.ProvisioningReschedule, err
		}
		return nil, controller.ProvisioningReschedule, errors.New(answer.Message)
	case errors.As(err, &answer) && answer.Code/100 == 4:
		// The node refused the request itself and made nothing.
		return nil, controller.ProvisioningFinished, fmt.Errorf("making the directory of volume %s on node %s: %w", o.PVName, node.Name, err)
	default:
		// Unreachable, timed out, or failed (5xx): the node may have
		// made the directory all the same (an answer lost on the way).
		// Any state but Reschedule keeps the claim's selected node, and
		// with an error the library tries again (a growing delay, from
		// 15 s to 1000 s, 15 times, then at every resync);
		// ProvisioningInBackground also keeps the claim among those in
		// progress, so that if it is deleted meanwhile the library still
		// calls Provision for it (those 15 times) and, once it succeeds, the
		// PersistentVolume it then makes is released at once and deleted
		// with its directory, which would otherwise stay on the node
		// (ProvisioningFinished would drop a deleted claim).
		return nil, controller.ProvisioningInBackground, fmt.Errorf("making the directory of volume %s on node %s: %w (tried again later)", o.PVName, node.Name, err)
	}
}

// BuildPV is the PersistentVolume of the claim in o on node n: the
// directory VolumesDir/NAME on n (which n makes: Provision), n alone in its
// node affinity, the claim's request as its capacity and its access
// modes. It refuses a node without a state disk (the data would be in
// RAM, lost at the node's next reboot) and access from several nodes.
func BuildPV(o controller.ProvisionOptions, n *corev1.Node, volumesDir string) (*corev1.PersistentVolume, error) {
	// What no node can change first; then the node.
	modes := o.PVC.Spec.AccessModes
	if len(modes) == 0 {
		modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	for _, m := range modes {
		if m != corev1.ReadWriteOnce && m != corev1.ReadWriteOncePod {
			return nil, fmt.Errorf("access mode %s: volumes of class %q are a directory on one node's disk, which only pods on that node can use: ask for ReadWriteOnce or ReadWriteOncePod", m, ClassName)
		}
	}
	if err := nodeapi.CheckVolumeName(o.PVName); err != nil {
		return nil, fmt.Errorf("volume name: %w", err)
	}
	if n.Labels[StateDiskLabel] != "true" {
		return nil, noStateDisk{n.Name}
	}
	size, ok := o.PVC.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		return nil, fmt.Errorf("claim %s/%s requests no storage (spec.resources.requests.storage)", o.PVC.Namespace, o.PVC.Name)
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if o.StorageClass != nil && o.StorageClass.ReclaimPolicy != nil {
		reclaim = *o.StorageClass.ReclaimPolicy
	}
	host := n.Labels[hostnameLabel]
	if host == "" {
		host = n.Name
	}
	// The node has made the directory (mode 0777) before the
	// PersistentVolume exists, and the kubelet uses a directory that is
	// there as it is (it checks its type, changes nothing: hostPath in
	// k8s.io/kubernetes/pkg/volume). OrCreate only matters if it is gone
	// (a state disk wiped under a bound volume): the pod then gets an
	// empty directory, root's, 0755, rather than not starting.
	dirOrCreate := corev1.HostPathDirectoryOrCreate
	fs := corev1.PersistentVolumeFilesystem
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        o.PVName,
			Annotations: map[string]string{NodeAnnotation: n.Name},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size.DeepCopy()},
			AccessModes:                   modes,
			PersistentVolumeReclaimPolicy: reclaim,
			VolumeMode:                    &fs,
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: filepath.Join(volumesDir, o.PVName), Type: &dirOrCreate},
			},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
					{Key: hostnameLabel, Operator: corev1.NodeSelectorOpIn, Values: []string{host}},
				}}},
			}},
		},
	}, nil
}

// Delete removes a volume's directory from its node, through the node's
// API; the library deletes the PersistentVolume only once that is done.
// When the node does not answer (down, rebooting) Delete fails: the
// library emits a VolumeFailedDelete event on the PersistentVolume and
// tries again later (with a growing delay, then at every resync), and
// the PersistentVolume stays Released, its data on the node, until it
// succeeds.
func (p *Provisioner) Delete(ctx context.Context, pv *corev1.PersistentVolume) error {
	if err := nodeapi.CheckVolumeName(pv.Name); err != nil {
		return fmt.Errorf("PersistentVolume %s: %w; this provisioner did not make it", pv.Name, err)
	}
	want := filepath.Join(p.VolumesDir, pv.Name)
	if pv.Spec.HostPath == nil || pv.Spec.HostPath.Path != want {
		got := "no hostPath"
		if pv.Spec.HostPath != nil {
			got = pv.Spec.HostPath.Path
		}
		return fmt.Errorf("PersistentVolume %s has %s, not %s where the nodes keep volumes: not removing anything; remove its data and the PersistentVolume by hand", pv.Name, got, want)
	}
	name := pv.Annotations[NodeAnnotation]
	if name == "" {
		return fmt.Errorf("PersistentVolume %s does not say which node holds it (annotation %s): remove %s from its node and the PersistentVolume by hand", pv.Name, NodeAnnotation, want)
	}
	n, err := p.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("node %s, which holds the data of PersistentVolume %s (%s), is not in the cluster: its data cannot be removed; once the machine is gone or its state disk wiped, delete the PersistentVolume by hand (kubectl delete pv %s)", name, pv.Name, want, pv.Name)
	}
	if err != nil {
		return fmt.Errorf("reading node %s: %w", name, err)
	}
	if err := p.Nodes.RemoveVolume(ctx, n, pv.Name); err != nil {
		return fmt.Errorf("removing the data of PersistentVolume %s from node %s: %w (the PersistentVolume stays until it is removed; tried again later)", pv.Name, name, err)
	}
	return nil
}

// InternalIP is the node's InternalIP address, where its API listens.
func InternalIP(n *corev1.Node) (string, error) {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && a.Address != "" {
			return a.Address, nil
		}
	}
	var have []string
	for _, a := range n.Status.Addresses {
		have = append(have, string(a.Type)+" "+a.Address)
	}
	return "", fmt.Errorf("node %s has no InternalIP address (it has: %s)", n.Name, strings.Join(have, ", "))
}
