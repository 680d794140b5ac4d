package components

import (
	"crypto/x509"
	"slices"
	"strings"
	"testing"

	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/pki"
)

// The provisioner's one certificate is its user to the API server and
// its client to the nodes' API, in the group that may only make and
// remove volumes there.
func TestLocalStorageCredentials(t *testing.T) {
	env := testEnv(t)
	if err := (LocalStorage{}).Prepare(env); err != nil {
		t.Fatal(err)
	}
	flags := LocalStorage{}.Flags(env)
	data, err := pki.ReadFile(flags["kubeconfig"])
	if err != nil {
		t.Fatal(err)
	}
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		t.Fatal(err)
	}
	// The kubeconfig names the certificate's file, which is renewed in
	// place (certs.go).
	if kc.CertFile == "" || kc.CertFile != kc.KeyFile || len(kc.CertPEM) != 0 {
		t.Fatalf("kubeconfig's client certificate: file %q key %q, %d bytes embedded; want one file", kc.CertFile, kc.KeyFile, len(kc.CertPEM))
	}
	pair, err := kc.ClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "kiln:local-storage" || !slices.Equal(cert.Subject.Organization, []string{nodeapi.VolumesGroup}) {
		t.Errorf("subject %v, want kiln:local-storage in %s only", cert.Subject, nodeapi.VolumesGroup)
	}
	if flags["volumes-dir"] != env.Path("volumes") || flags["node-api-port"] != "10260" {
		t.Errorf("flags %v", flags)
	}
}

// Only a node with a state disk says so.
func TestKubeletStateDiskLabel(t *testing.T) {
	env := testEnv(t)
	env.Config.Role = node.RoleWorker
	if l := (Kubelet{}).Flags(env)["node-labels"]; strings.Contains(l, StateDiskLabel) {
		t.Errorf("diskless node labelled %q", l)
	}
	env.Config.Storage.StateDisk = "/dev/vda"
	if l := (Kubelet{}).Flags(env)["node-labels"]; !strings.Contains(l, ","+StateDiskLabel+"=true") {
		t.Errorf("node with a state disk labelled %q", l)
	}
}

// The node API serves the kubelet's serving certificate: a master's
// issued by itself, a worker's as its kubelet renews it.
func TestNodeAPIServingFiles(t *testing.T) {
	env := testEnv(t)
	if c, k := NodeAPIServingFiles(env); c != env.Path(kubeletServingCert) || k != env.Path(kubeletServingKey) {
		t.Errorf("master: %s %s", c, k)
	}
	env.Config.Role = node.RoleWorker
	if c, k := NodeAPIServingFiles(env); c != k || !strings.HasPrefix(c, Kubelet{}.Flags(env)["cert-dir"]+"/") {
		t.Errorf("worker: %s %s, not the kubelet's cert-dir %s", c, k, Kubelet{}.Flags(env)["cert-dir"])
	}
}
