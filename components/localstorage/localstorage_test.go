package localstorage

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"kiln/configs/nodeapi"
	"kiln/pki"
)

const (
	uid     = "0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6"
	pvName  = "pvc-" + uid
	volumes = "/var/lib/kiln/volumes"
)

func claim(modes ...corev1.PersistentVolumeAccessMode) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: "app", UID: types.UID(uid)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: modes,
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("2Gi")}},
		},
	}
}

func testNode(name string, stateDisk bool, ip string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
	if stateDisk {
		n.Labels[StateDiskLabel] = "true"
	}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip}}
	}
	return n
}

func options(pvc *corev1.PersistentVolumeClaim, nodeName string) controller.ProvisionOptions {
	del := corev1.PersistentVolumeReclaimDelete
	return controller.ProvisionOptions{
		StorageClass:     &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: ClassName}, Provisioner: ProvisionerName, ReclaimPolicy: &del},
		PVName:           pvName,
		PVC:              pvc,
		SelectedNodeName: nodeName,
	}
}

// A claim's volume is a directory under the volumes' directory of its
// node, which the node makes, on that node alone, of the size and
// access modes asked for.
func TestBuildPV(t *testing.T) {
	pv, err := BuildPV(options(claim(corev1.ReadWriteOncePod), "kiln-worker-1"), testNode("kiln-worker-1", true, ""), volumes)
	if err != nil {
		t.Fatal(err)
	}
	hp := pv.Spec.HostPath
	if hp == nil || hp.Path != volumes+"/"+pvName || hp.Type == nil || *hp.Type != corev1.HostPathDirectoryOrCreate {
		t.Errorf("hostPath %+v, want %s/%s DirectoryOrCreate", hp, volumes, pvName)
	}
	if pv.Name != pvName || pv.Annotations[NodeAnnotation] != "kiln-worker-1" {
		t.Errorf("name %s, annotations %v", pv.Name, pv.Annotations)
	}
	want := &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
		MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{"kiln-worker-1"}}},
	}}}}
	if !reflect.DeepEqual(pv.Spec.NodeAffinity, want) {
		t.Errorf("node affinity %+v", pv.Spec.NodeAffinity)
	}
	if c := pv.Spec.Capacity[corev1.ResourceStorage]; c.String() != "2Gi" {
		t.Errorf("capacity %s, want 2Gi", c.String())
	}
	if !reflect.DeepEqual(pv.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}) {
		t.Errorf("access modes %v", pv.Spec.AccessModes)
	}
	if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || pv.Spec.VolumeMode == nil || *pv.Spec.VolumeMode != corev1.PersistentVolumeFilesystem {
		t.Errorf("reclaim %s, mode %v", pv.Spec.PersistentVolumeReclaimPolicy, pv.Spec.VolumeMode)
	}
	// No access mode: ReadWriteOnce.
	if pv, err := BuildPV(options(claim(), "kiln-worker-1"), testNode("kiln-worker-1", true, ""), volumes); err != nil || !reflect.DeepEqual(pv.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
		t.Errorf("no access mode: %v, %v", pv, err)
	}
}

func TestBuildPVRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		pvc  *corev1.PersistentVolumeClaim
		node *corev1.Node
		want string
	}{
		{"diskless node", claim(corev1.ReadWriteOnce), testNode("kiln-worker-1", false, ""),
			`node kiln-worker-1 has no state disk: PersistentVolumes of class "local" keep their data on a node's state disk (storage.stateDisk in the node config), and this node keeps its data in RAM; run the pod on a node that has one (nodeSelector kiln.dev/state-disk: "true")`},
		{"ReadWriteMany", claim(corev1.ReadWriteOnce, corev1.ReadWriteMany), testNode("kiln-worker-1", true, ""),
			`access mode ReadWriteMany: volumes of class "local" are a directory on one node's disk, which only pods on that node can use: ask for ReadWriteOnce or ReadWriteOncePod`},
		{"ReadOnlyMany", claim(corev1.ReadOnlyMany), testNode("kiln-worker-1", true, ""), "access mode ReadOnlyMany"},
	} {
		_, err := BuildPV(options(tc.pvc, tc.node.Name), tc.node, volumes)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if tc.name == "diskless node" && err.Error() != tc.want {
			t.Errorf("diskless node: the event would say %q, want %q", err, tc.want)
		}
	}
}

// fakeNodes is the nodes' API as Provision sees it: it records the
// volumes it is asked to make, and answers for a node with its error.
type fakeNodes struct {
	made []string
	errs map[string]error
}

func (f *fakeNodes) MakeVolume(_ context.Context, n *corev1.Node, name string) error {
	f.made = append(f.made, n.Name+" "+name)
	return f.errs[n.Name]
}

func (f *fakeNodes) RemoveVolume(context.Context, *corev1.Node, string) error {
	return errors.New("not here")
}

// Provision reads the claim's node: one without a state disk by its label
// sends the claim back to the scheduler with the reason (the library's
// event on the claim), without asking the node; one with a label has the
// node make the volume's directory first, and the node's answer decides.
func TestProvision(t *testing.T) {
	cs := fake.NewClientset(testNode("disk", true, "10.0.0.2"), testNode("diskless", false, "10.0.0.3"),
		testNode("stale", true, "10.0.0.4"), testNode("down", true, "10.0.0.5"), testNode("old", true, "10.0.0.6"), testNode("failing", true, "10.0.0.7"))
	nodes := &fakeNodes{errs: map[string]error{
		"stale":   &StatusError{Node: "stale", Code: 409, Status: "409 Conflict", Message: "node stale has no state disk: its volumes would live in RAM"},
		"down":    errors.New("node down's API at 10.0.0.5:10260: connection refused"),
		"old":     &StatusError{Node: "old", Code: 403, Status: "403 Forbidden", Message: "may not"},
		"failing": &StatusError{Node: "failing", Code: 500, Status: "500 Internal Server Error", Message: "read-only file system"},
	}}
	p := &Provisioner{Client: cs, VolumesDir: volumes, Nodes: nodes}
	ctx := context.Background()
	pv, state, err := p.Provision(ctx, options(claim(corev1.ReadWriteOnce), "disk"))
	if err != nil || state != controller.ProvisioningFinished || pv.Spec.HostPath.Path != volumes+"/"+pvName {
		t.Errorf("node with a state disk: %v %s %v", pv, state, err)
	}
	if want := []string{"disk " + pvName}; !reflect.DeepEqual(nodes.made, want) {
		t.Errorf("nodes asked to make %v, want %v", nodes.made, want)
	}
	nodes.made = nil
	for _, tc := range []struct {
		name, node string
		pvc        *corev1.PersistentVolumeClaim
		state      controller.ProvisioningState
		want       string
		// asked: the node is asked to make the directory.
		asked bool
	}{
		{"diskless node", "diskless", claim(corev1.ReadWriteOnce), controller.ProvisioningReschedule, "node diskless has no state disk", false},
		{"ReadWriteMany", "disk", claim(corev1.ReadWriteMany), controller.ProvisioningFinished, "access mode ReadWriteMany", false},
		{"no node", "", claim(corev1.ReadWriteOnce), controller.ProvisioningFinished, "WaitForFirstConsumer", false},
		{"node gone", "gone", claim(corev1.ReadWriteOnce), controller.ProvisioningReschedule, "node gone is not in the cluster", false},
		// The label says a state disk, the node says none: its word.
		{"stale label", "stale", claim(corev1.ReadWriteOnce), controller.ProvisioningReschedule, "node stale has no state disk: its volumes would live in RAM", true},
		{"node down", "down", claim(corev1.ReadWriteOnce), controller.ProvisioningInBackground, "making the directory of volume " + pvName + " on node down: node down's API at 10.0.0.5:10260: connection refused (tried again later)", true},
		{"node failing", "failing", claim(corev1.ReadWriteOnce), controller.ProvisioningInBackground, "500 Internal Server Error: read-only file system", true},
		{"node refusing", "old", claim(corev1.ReadWriteOnce), controller.ProvisioningFinished, "403 Forbidden: may not", true},
	} {
		nodes.made = nil
		pv, state, err := p.Provision(ctx, options(tc.pvc, tc.node))
		if pv != nil || err == nil || state != tc.state || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v %s %v, want %s %q", tc.name, pv, state, err, tc.state, tc.want)
		}
		if asked := len(nodes.made) > 0; asked != tc.asked {
			t.Errorf("%s: node asked %v", tc.name, nodes.made)
		}
	}
	// The event says what the node says, and nothing more.
	if _, _, err := p.Provision(ctx, options(claim(corev1.ReadWriteOnce), "stale")); err.Error() != "node stale has no state disk: its volumes would live in RAM" {
		t.Errorf("stale label: the event would say %q", err)
	}
}

// Provision has the node make the volume's directory over the node API,
// with a real TLS node: PUT /volumes/NAME before the PersistentVolume;
// the node's refusal for want of a state disk sends the claim back to the
// scheduler with its words, and a node that does not answer is asked
// again later.
func TestProvisionAsksTheNode(t *testing.T) {
	ca, err := pki.NewCA("kiln-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, _ := ca.Issue(pki.CertRequest{CommonName: "kiln:local-storage", Organization: []string{nodeapi.VolumesGroup}, Client: true, Validity: time.Hour})
	var got []string
	port := nodeServer(t, ca, "w1", func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.Path+" by "+r.TLS.PeerCertificates[0].Subject.CommonName)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "made\n")
	})
	pair := pairFile(t, clientCert, clientKey)
	api, err := NewNodeAPI(ca.CertPEM, pair, pair, port)
	if err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset(testNode("w1", true, "127.0.0.1"), testNode("w2", true, "127.0.0.1"))
	p := &Provisioner{Client: cs, VolumesDir: volumes, Nodes: api}
	ctx := context.Background()
	pv, state, err := p.Provision(ctx, options(claim(corev1.ReadWriteOnce), "w1"))
	if err != nil || state != controller.ProvisioningFinished || pv == nil {
		t.Fatalf("provision: %v %s %v", pv, state, err)
	}
	if want := []string{"PUT /volumes/" + pvName + " by kiln:local-storage"}; !reflect.DeepEqual(got, want) {
		t.Errorf("the node was sent %v, want %v", got, want)
	}
	// w2's address answers with w1's certificate: not w2, not asked.
	got = nil
	if _, state, err := p.Provision(ctx, options(claim(corev1.ReadWriteOnce), "w2")); err == nil || state != controller.ProvisioningInBackground || len(got) > 0 ||
		!strings.Contains(err.Error(), `serves the certificate of "system:node:w1", not of node w2`) {
		t.Errorf("another node's certificate: %s %v, node sent %v", state, err, got)
	}

	const refusal = "node w1 has no state disk: its volumes would live in RAM and vanish at power-off"
	diskless := nodeServer(t, ca, "w1", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, refusal, http.StatusConflict)
	})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	_, closed, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	closedPort, _ := strconv.Atoi(closed)
	for _, tc := range []struct {
		name  string
		port  int
		state controller.ProvisioningState
		want  string
	}{
		{"diskless", diskless, controller.ProvisioningReschedule, refusal},
		{"down", closedPort, controller.ProvisioningInBackground, "connection refused"},
	} {
		api.port = tc.port
		pv, state, err := p.Provision(ctx, options(claim(corev1.ReadWriteOnce), "w1"))
		if pv != nil || err == nil || state != tc.state || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v %s %v, want %s %q", tc.name, pv, state, err, tc.state, tc.want)
		}
		if tc.name == "diskless" && err.Error() != refusal {
			t.Errorf("diskless: the event would say %q, want the node's %q", err, refusal)
		}
	}
}

// nodeServer is a node API on 127.0.0.1 with a serving certificate of
// ca for node name; it records the requests it was sent.
func nodeServer(t *testing.T, ca *pki.CA, name string, h http.HandlerFunc) (port int) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(pki.CertRequest{CommonName: "system:node:" + name, Organization: []string{"system:nodes"},
		DNSNames: []string{name}, IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := tls.X509KeyPair(certPEM, keyPEM)
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{kp}, ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ = strconv.Atoi(p)
	return port
}

func pvFor(node string) *corev1.PersistentVolume {
	pv, _ := BuildPV(options(claim(corev1.ReadWriteOnce), node), testNode(node, true, ""), volumes)
	return pv
}

// Delete asks the volume's node to remove its directory, over TLS with
// the node's serving certificate checked against the cluster CA, and
// fails (the PersistentVolume stays) when the node does not do it.
func TestDelete(t *testing.T) {
	ca, err := pki.NewCA("kiln-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, _ := ca.Issue(pki.CertRequest{CommonName: "kiln:local-storage", Organization: []string{nodeapi.VolumesGroup}, Client: true, Validity: time.Hour})
	var got []string
	port := nodeServer(t, ca, "w1", func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.Path+" by "+r.TLS.PeerCertificates[0].Subject.CommonName)
		io.WriteString(w, "removed\n")
	})
	pair := pairFile(t, clientCert, clientKey)
	api, err := NewNodeAPI(ca.CertPEM, pair, pair, port)
	if err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset(testNode("w1", true, "127.0.0.1"), testNode("w2", true, "127.0.0.1"), testNode("noaddr", true, ""))
	p := &Provisioner{Client: cs, VolumesDir: volumes, Nodes: api}
	ctx := context.Background()
	if err := p.Delete(ctx, pvFor("w1")); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if want := []string{"DELETE /volumes/" + pvName + " by kiln:local-storage"}; !reflect.DeepEqual(got, want) {
		t.Errorf("the node was sent %v, want %v", got, want)
	}

	// w2's address answers with w1's certificate: not w2.
	if err := p.Delete(ctx, pvFor("w2")); err == nil || !strings.Contains(err.Error(), `serves the certificate of "system:node:w1", not of node w2`) {
		t.Errorf("another node's certificate: %v", err)
	}
	for name, pv := range map[string]*corev1.PersistentVolume{
		"node gone":       pvFor("gone"),
		"no address":      pvFor("noaddr"),
		"another path":    func() *corev1.PersistentVolume { pv := pvFor("w1"); pv.Spec.HostPath.Path = "/etc"; return pv }(),
		"not our name":    func() *corev1.PersistentVolume { pv := pvFor("w1"); pv.Name = "data"; return pv }(),
		"no node noted":   func() *corev1.PersistentVolume { pv := pvFor("w1"); pv.Annotations = nil; return pv }(),
		"not a host path": func() *corev1.PersistentVolume { pv := pvFor("w1"); pv.Spec.HostPath = nil; return pv }(),
	} {
		got = nil
		if err := p.Delete(ctx, pv); err == nil || len(got) > 0 {
			t.Errorf("%s: deleted (%v), node sent %v", name, err, got)
		}
	}
	if err := p.Delete(ctx, pvFor("gone")); !strings.Contains(err.Error(), "kubectl delete pv "+pvName) {
		t.Errorf("node gone: %v", err)
	}

	// A node that refuses, one whose certificate is not the cluster's,
	// and one that does not answer.
	refusing := nodeServer(t, ca, "w1", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "volume x: removing y: read-only file system", http.StatusInternalServerError)
	})
	other, _ := pki.NewCA("other", time.Hour)
	stranger := nodeServer(t, other, "w1", func(w http.ResponseWriter, r *http.Request) {})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	_, closed, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	closedPort, _ := strconv.Atoi(closed)
	for _, tc := range []struct {
		name string
		port int
		want string
	}{
		{"refusing", refusing, "500 Internal Server Error: volume x: removing y: read-only file system"},
		{"another CA", stranger, "once its kubelet has its serving certificate"},
		{"down", closedPort, "connection refused"},
	} {
		api.port = tc.port
		err := p.Delete(ctx, pvFor("w1"))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "the PersistentVolume stays") {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// pairFile writes a certificate and its key to one file, as the node
// keeps the provisioner's (components.Cert).
func pairFile(t *testing.T, certPEM, keyPEM []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pair.pem")
	if err := os.WriteFile(p, append(append([]byte{}, certPEM...), keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
