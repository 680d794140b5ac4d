//go:build integration

package host

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln/configs/cluster"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/pki"
)

// TestLocalVolumes: the masters' local-storage provisioner against a real
// API server and controller-manager. There is no kubelet here, so the
// tests stand in for the scheduler (a claim's selected-node annotation)
// and for a node (a Node object, and for its API the master's own, which
// serves a kubelet serving certificate the test issues for that node; the
// master's config says it has a state disk). A claim of the default class
// gets a volume on a node with a state disk, whose directory the node
// makes, writable by any user, before the volume exists, and its data
// goes with it; a claim for a diskless node is refused with an event that
// says why.
func TestLocalVolumes(t *testing.T) {
	dir := t.TempDir()
	clusterDir := genCluster(t, dir)
	kc := filepath.Join(clusterDir, "admin.kubeconfig")
	dataDir := filepath.Join(dir, "data")
	// No disk is mounted here (init/boot would): the data directory is
	// the test's, on whatever disk it is.
	n := startNode(t, clusterDir, dataDir, writeConfig(t, dir, "storage:\n  stateDisk: LABEL=kiln-state\n"))
	n.waitReady(kc, 3*time.Minute)
	k := kubectl(kc)

	// The node "disk-1" has a state disk and its API is this master's
	// node API (address 127.0.0.2): a serving certificate of the cluster
	// CA for system:node:disk-1 where a master's kubelet keeps its own.
	cl, err := cluster.Load(clusterDir)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := cl.CA.Issue(pki.CertRequest{CommonName: "system:node:disk-1", Organization: []string{"system:nodes"},
		DNSNames: []string{"disk-1"}, IPs: []net.IP{net.ParseIP(address)}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for p, b := range map[string][]byte{"kubelet/serving.crt": cert, "kubelet/serving.key": key} {
		if err := pki.WriteFile(filepath.Join(dataDir, p), b, true); err != nil {
			t.Fatal(err)
		}
	}
	// The addons task makes the default class once the API serves; a
	// claim made before would get it later, from the controller-manager.
	testutil.Eventually(t, 2*time.Minute, poll, "StorageClass local", func() error {
		_, err := k.Run("get", "storageclass", "local")
		return err
	})
	apply(t, k, dir, `apiVersion: v1
kind: Node
metadata:
  name: disk-1
  labels: {kubernetes.io/hostname: disk-1, kiln.dev/state-disk: "true"}
---
apiVersion: v1
kind: Node
metadata:
  name: diskless-1
  labels: {kubernetes.io/hostname: diskless-1}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: default
  annotations: {volume.kubernetes.io/selected-node: disk-1}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: nowhere
  namespace: default
  annotations: {volume.kubernetes.io/selected-node: diskless-1}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
`)
	k.Must(t, "patch", "node", "disk-1", "--subresource=status", "--type=merge",
		"-p", fmt.Sprintf(`{"status":{"addresses":[{"type":"InternalIP","address":%q}]}}`, address))

	if class := k.Must(t, "get", "pvc", "data", "-o", "jsonpath={.spec.storageClassName}"); class != "local" {
		t.Errorf("the claim's class is %q, want the default, local", class)
	}
	var pv string
	testutil.Eventually(t, 2*time.Minute, poll, "claim data bound", func() error {
		out, _ := k.Run("get", "pvc", "data", "-o", "jsonpath={.status.phase} {.spec.volumeName}")
		if f := strings.Fields(out); len(f) == 2 && f[0] == "Bound" {
			pv = f[1]
			return nil
		}
		return errorf("claim: %q", out)
	})
	path := k.Must(t, "get", "pv", pv, "-o", "jsonpath={.spec.hostPath.path} {.spec.hostPath.type} {.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]} {.spec.capacity.storage}")
	want := filepath.Join(dataDir, "volumes", pv) + " DirectoryOrCreate disk-1 1Gi"
	if path != want {
		t.Errorf("volume %s: %q, want %q", pv, path, want)
	}
	// The node made its directory before the volume was made, for a pod
	// of any user (kiln-node runs with the usual umask, 022).
	vol := filepath.Join(dataDir, "volumes", pv)
	if fi, err := os.Lstat(vol); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o777 {
		t.Errorf("volume %s: its directory %s: %v %v, want a directory of mode 0777", pv, vol, fi, err)
	}

	testutil.Eventually(t, 2*time.Minute, poll, "an event on claim nowhere", func() error {
		out, _ := k.Run("get", "events", "--field-selector", "involvedObject.name=nowhere,reason=ProvisioningFailed", "-o", "jsonpath={.items[*].message}")
		if !strings.Contains(out, `node diskless-1 has no state disk: PersistentVolumes of class "local" keep their data on a node's state disk`) {
			return errorf("events: %q", out)
		}
		return nil
	})
	// ...and sent back to the scheduler, which would choose again.
	testutil.Eventually(t, time.Minute, poll, "claim nowhere without a node", func() error {
		out, err := k.Run("get", "pvc", "nowhere", "-o", `jsonpath={.metadata.annotations}`)
		var ann map[string]string
		if err == nil {
			err = json.Unmarshal([]byte(out), &ann)
		}
		if _, still := ann["volume.kubernetes.io/selected-node"]; err != nil || still || ann["volume.kubernetes.io/storage-provisioner"] != "kiln.dev/local" {
			return errorf("annotations %s %v", out, err)
		}
		return nil
	})

	// A pod would write to it; the test does.
	if err := os.MkdirAll(filepath.Join(vol, "db"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(vol, "db", "rows"), []byte("data"), 0o600)
	k.Must(t, "delete", "pvc", "data", "--wait=false")
	testutil.Eventually(t, 2*time.Minute, poll, "volume "+pv+" deleted", func() error {
		if out, err := k.Run("get", "pv", pv, "--ignore-not-found", "-o", "name"); err != nil || out != "" {
			return errorf("still there: %q %v", out, err)
		}
		return nil
	})
	if _, err := os.Stat(vol); !os.IsNotExist(err) {
		t.Errorf("the volume's data %s outlived it: %v", vol, err)
	}
}

// apply applies YAML with kubectl.
func apply(t *testing.T, k e2e.Kubectl, dir, yaml string) {
	t.Helper()
	f := filepath.Join(dir, fmt.Sprintf("apply-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	k.Must(t, "apply", "-f", f)
}
