package components

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"slices"
	"testing"

	"kiln/configs/node"
	"kiln/pki"
)

// A master with controlPlane.vip runs the vip component after its API
// server, serves the API on every address (the VIP comes and goes) with
// the VIP in its certificate; a worker seeds its API load balancer with
// the VIP too; without a VIP nothing changes.
func TestVIPComponent(t *testing.T) {
	env := testEnv(t)
	env.Config.ControlPlane.Masters = []string{"192.0.2.10", "192.0.2.11", "192.0.2.12"}
	if f := (APIServer{}).Flags(env); f["bind-address"] != "192.0.2.10" {
		t.Errorf("without a VIP, bind-address %s, want the node's address", f["bind-address"])
	}
	for _, c := range For(&env.Config) {
		if c.Name() == node.ComponentVIP {
			t.Error("a master without controlPlane.vip runs the vip component")
		}
	}
	env.Config.ControlPlane.VIP = "192.0.2.5"

	var names []string
	for _, c := range For(&env.Config) {
		names = append(names, c.Name())
	}
	if i, j := slices.Index(names, node.ComponentAPIServer), slices.Index(names, node.ComponentVIP); j < 0 || j < i {
		t.Errorf("a master with a VIP runs %v: want vip after kube-apiserver", names)
	}
	if !slices.Equal((VIP{}).DependsOn(), []string{node.ComponentAPIServer}) {
		t.Errorf("vip depends on %v", (VIP{}).DependsOn())
	}
	worker := env.Config
	worker.Role = node.RoleWorker
	for _, c := range For(&worker) {
		if c.Name() == node.ComponentVIP {
			t.Error("a worker runs the vip component")
		}
	}

	if err := (VIP{}).Prepare(env); err != nil {
		t.Fatal(err)
	}
	f := (VIP{}).Flags(env)
	want := map[string]string{
		"vip": "192.0.2.5", "node-ip": "192.0.2.10", "identity": "m0", "kubeconfig": env.Path(vipKubeconfig),
		"lease-duration": "10s", "renew-deadline": "7s", "retry-period": "1s",
	}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("vip flag %s = %q, want %q", k, f[k], v)
		}
	}
	if len(f) != len(want) {
		t.Errorf("vip flags %v", f)
	}
	data, err := os.ReadFile(env.Path(vipKubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ReadCert(kc.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != vipUser || len(cert.Subject.Organization) != 0 || kc.Server != "https://192.0.2.10:6443" {
		t.Errorf("vip's kubeconfig: user %s %v, server %s; want %s with no group, this master's API server", cert.Subject.CommonName, cert.Subject.Organization, kc.Server, vipUser)
	}

	// The API server listens on every address and its certificate
	// names the VIP.
	if f := (APIServer{}).Flags(env); f["bind-address"] != "0.0.0.0" || f["advertise-address"] != "192.0.2.10" {
		t.Errorf("with a VIP: bind-address %s, advertise-address %s; want 0.0.0.0 and the node's", f["bind-address"], f["advertise-address"])
	}
	if l := (APIServer{}).Listens(env); !slices.Equal(l, []string{"0.0.0.0:6443"}) {
		t.Errorf("with a VIP the API server listens on %v", l)
	}
	if err := (APIServer{}).Prepare(env); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(env.Path(apiServingCert))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	serving, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(env.Cluster.CA.Cert)
	for _, name := range []string{"192.0.2.5", "192.0.2.10", "master.example"} {
		if _, err := serving.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("serving certificate not valid for %s: %v", name, err)
		}
	}

	// A worker's balancer: the masters and the VIP; the VIP alone when
	// the config lists no masters.
	env.Config.Role = node.RoleWorker
	if got := (APILB{}).Flags(env)["seeds"]; got != "192.0.2.10:6443,192.0.2.11:6443,192.0.2.12:6443,192.0.2.5:6443" {
		t.Errorf("seeds with masters and a VIP: %s", got)
	}
	env.Config.ControlPlane.Masters = nil
	env.Config.APIEndpoint = "https://10.1.0.5:443"
	if got := (APILB{}).Flags(env)["seeds"]; got != "192.0.2.5:6443" {
		t.Errorf("seeds with a VIP only: %s", got)
	}
}
