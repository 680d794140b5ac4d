package components

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"kiln/configs/node"
	"kiln/pki"
)

// prepareAll runs every Prepare of the node's components, as up does.
func prepareAll(t *testing.T, env *Env) []Component {
	t.Helper()
	sysctlDir = t.TempDir()
	for _, d := range []string{"net/ipv4", "vm", "kernel/keys"} {
		os.MkdirAll(filepath.Join(sysctlDir, d), 0o755)
	}
	comps := For(&env.Config)
	for _, c := range comps {
		if err := c.Prepare(env); err != nil {
			t.Fatalf("%s: %v", c.Name(), err)
		}
	}
	if err := PrepareNodeAPI(env); err != nil {
		t.Fatal(err)
	}
	return comps
}

// Every certificate a master issues lives certificates.validity, is due
// at two thirds of it, and a renewal keeps the files' readers whole.
func TestMasterCertsRenewal(t *testing.T) {
	env := testEnv(t)
	env.Config.Certificates.Validity = node.Duration(3 * time.Minute)
	comps := prepareAll(t, env)
	certs := NodeCerts(env, comps)
	var names []string
	for _, c := range certs {
		names = append(names, c.Name)
	}
	for _, want := range []string{"etcd serving", "etcd peer", "etcd client", "kube-apiserver serving", "kube-apiserver kubelet client",
		"front-proxy client", "system:kube-controller-manager client", "kube-controller-manager serving", "system:kube-scheduler client",
		"kube-scheduler serving", "kiln:addons client", "kiln:csr-approver client", "kiln:metrics-server client", "metrics-server serving",
		"kiln:local-storage client", "kubelet serving"} {
		if !slices.Contains(names, want) {
			t.Errorf("no %q among %v", want, names)
		}
	}
	now := time.Now()
	for _, c := range certs {
		if c.Users == "" || c.Restart != "" {
			t.Errorf("%s: users %q, restart %q: every reader reloads", c.Name, c.Users, c.Restart)
		}
		cert, err := ReadCert(c.File)
		if err != nil {
			t.Fatal(err)
		}
		if life := cert.NotAfter.Sub(now); life < 170*time.Second || life > 3*time.Minute {
			t.Errorf("%s: valid for %s, want 3m", c.Name, life)
		}
		at, due := c.Due(env, now)
		if due || at.Sub(now) < 100*time.Second || at.Sub(now) > 2*time.Minute {
			t.Errorf("%s: due %v at %s from now, want not yet, in about 2m", c.Name, due, at.Sub(now))
		}
		if _, due := c.Due(env, now.Add(2*time.Minute+time.Second)); !due {
			t.Errorf("%s: not due two thirds into its lifetime", c.Name)
		}
	}

	// A renewal: a new certificate for the key already there when the
	// key is a file of its own; the kubeconfigs are not rewritten.
	kcBefore, _ := os.ReadFile(env.Path(schedulerKubeconfig))
	for _, c := range certs {
		keyBefore, _ := os.ReadFile(c.KeyFile)
		old, _ := ReadCert(c.File)
		if err := c.Issue(env, true); err != nil {
			t.Fatal(err)
		}
		cert, err := ReadCert(c.File)
		if err != nil {
			t.Fatal(err)
		}
		if cert.SerialNumber.Cmp(old.SerialNumber) == 0 || cert.Subject.String() != old.Subject.String() || !slices.Equal(cert.DNSNames, old.DNSNames) {
			t.Errorf("%s: renewed %v (serial %s), was %v (serial %s)", c.Name, cert.Subject, cert.SerialNumber, old.Subject, old.SerialNumber)
		}
		if err := cert.CheckSignatureFrom(c.CA(env).Cert); err != nil {
			t.Errorf("%s: %v", c.Name, err)
		}
		keyAfter, _ := os.ReadFile(c.KeyFile)
		if c.KeyFile != c.File && string(keyAfter) != string(keyBefore) {
			t.Errorf("%s: a renewal changed the key file", c.Name)
		}
		data, _ := os.ReadFile(c.File)
		if _, err := pki.ParseKeyPEM(data); (err == nil) != (c.KeyFile == c.File) {
			t.Errorf("%s: key in the certificate file: %v", c.Name, err == nil)
		}
	}
	if kc, _ := os.ReadFile(env.Path(schedulerKubeconfig)); string(kc) != string(kcBefore) {
		t.Error("a renewal rewrote a kubeconfig")
	}
	// The API server still serves its CA after the leaf.
	data, _ := os.ReadFile(env.Path(apiServingCert))
	if n := strings.Count(string(data), "BEGIN CERTIFICATE"); n != 2 {
		t.Errorf("API server's certificate file holds %d certificates, want the leaf and the CA", n)
	}

	// The controller-manager signs the kubelets' certificates for as long.
	if f := (ControllerManager{}).Flags(env); f["cluster-signing-duration"] != "3m0s" {
		t.Errorf("cluster-signing-duration %q", f["cluster-signing-duration"])
	}
}

// A master's kubelet gets its first client certificate from the CA as a
// pair the kubelet rotates, kept while it is good; the node's kubeconfig
// names that pair.
func TestMasterKubeletClientSeed(t *testing.T) {
	env := testEnv(t)
	prepareAll(t, env)
	pair := kubeletClientPair(env)
	fi, err := os.Lstat(pair)
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("%s: %v, want a symlink (the kubelet's rotation refuses a regular file)", pair, err)
	}
	first, _ := os.Readlink(pair)
	cert, err := ReadCert(pair)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "system:node:m0" || !slices.Equal(cert.Subject.Organization, []string{"system:nodes"}) ||
		!slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("kubelet client certificate %v %v", cert.Subject, cert.ExtKeyUsage)
	}
	data, _ := os.ReadFile(KubeletKubeconfig(env))
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		t.Fatal(err)
	}
	if kc.CertFile != pair || kc.KeyFile != pair || len(kc.CertPEM) != 0 {
		t.Errorf("node kubeconfig names %q/%q, want %s", kc.CertFile, kc.KeyFile, pair)
	}
	if conf, _ := os.ReadFile(env.Path(kubeletConfig)); !strings.Contains(string(conf), "rotateCertificates: true") {
		t.Errorf("the master's kubelet does not rotate:\n%s", conf)
	}
	// Kept at the next start.
	if err := (Kubelet{}).Prepare(env); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Readlink(pair); again != first {
		t.Errorf("a good certificate was replaced: %s, was %s", again, first)
	}
	// Another cluster's is replaced.
	other := testEnv(t)
	certPEM, keyPEM, _ := other.Cluster.CA.Issue(pki.CertRequest{CommonName: "system:node:m0", Client: true})
	if _, err := pki.WriteRotatedPair(filepath.Dir(pair), "kubelet-client", append(certPEM, keyPEM...)); err != nil {
		t.Fatal(err)
	}
	if err := (Kubelet{}).Prepare(env); err != nil {
		t.Fatal(err)
	}
	if cert, _ := ReadCert(pair); cert.CheckSignatureFrom(env.Cluster.CA.Cert) != nil {
		t.Error("another CA's kubelet certificate was kept")
	}
}

// A worker issues nothing; its kubelet rotates both its certificates. A
// master without pods issues the node API's serving certificate.
func TestCertsByRole(t *testing.T) {
	env := testEnv(t)
	env.Config.Role = node.RoleWorker
	if c := NodeCerts(env, For(&env.Config)); len(c) != 0 {
		t.Errorf("a worker issues %v", c)
	}
	rot := KubeletRotated(env)
	if !strings.HasSuffix(rot["kubelet client"], "kubelet/pki/kubelet-client-current.pem") || !strings.HasSuffix(rot["kubelet serving"], "kubelet/pki/kubelet-server-current.pem") {
		t.Errorf("worker's rotated certificates %v", rot)
	}
	if cert, key := NodeAPIServingFiles(env); cert != rot["kubelet serving"] || key != cert {
		t.Errorf("node API serves %s, not the rotated %s", cert, rot["kubelet serving"])
	}

	env = testEnv(t)
	env.Config.RunPods = false
	var found bool
	for _, c := range NodeCerts(env, For(&env.Config)) {
		found = found || c.Name == "node API serving"
		if c.Name == "kubelet serving" {
			t.Error("a master without pods lists a kubelet serving certificate")
		}
	}
	if !found || KubeletRotated(env) != nil {
		t.Errorf("master without pods: node API serving listed %v, rotated %v", found, KubeletRotated(env))
	}
}

// A certificate that ends with its CA cannot be renewed into a longer
// one: it is not due, so a CA near its end does not make the node renew
// ever more often.
func TestCertNotDuePastItsCA(t *testing.T) {
	env := testEnv(t)
	ca, err := pki.NewCA("short-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	env.Cluster.CA = ca
	c := clientKubeconfig(env, env.Path("kubeconfig/x.conf"), "x", nil, "test")
	if err := c.Issue(env, false); err != nil {
		t.Fatal(err)
	}
	cert, _ := ReadCert(c.File)
	if !cert.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Fatalf("NotAfter %s, want the CA's %s", cert.NotAfter, ca.Cert.NotAfter)
	}
	if _, due := c.Due(env, time.Now().Add(50*time.Minute)); due {
		t.Error("due although it ends with its CA")
	}
	// A missing file is due at once.
	os.Remove(c.File)
	if _, due := c.Due(env, time.Now()); !due {
		t.Error("a missing certificate is not due")
	}
}
