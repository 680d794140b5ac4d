package entry

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln/components/apilb"
	"kiln/internal/testutil"
	"kiln/pki"
)

// startLB runs a node-local API load balancer in front of seeds.
func startLB(t *testing.T, seeds ...string) *apilb.LB {
	t.Helper()
	lb, err := apilb.Listen(apilb.Options{Listen: "127.0.0.1:0", Seeds: seeds, CheckTLS: true,
		CheckInterval: 100 * time.Millisecond, CheckTimeout: 300 * time.Millisecond, DialTimeout: 500 * time.Millisecond,
		Log: &testutil.SyncBuffer{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lb.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return lb
}

// A worker joins through its API load balancer: the master's certificate
// is checked under 127.0.0.1, which kiln's API server's certificate has,
// and the node's kubeconfig names the balancer. A kubeconfig of an earlier
// boot that named the master directly is pointed at the balancer.
func TestJoinThroughTheAPILB(t *testing.T) {
	m := &fakeMaster{t: t, ca: newCA(t, "kiln-ca")}
	m.start()
	lb := startLB(t, m.host)
	out := &testutil.SyncBuffer{}
	o := testJoinOptions(t, m, out)
	o.endpoint, o.masters = "https://"+lb.Addr().String(), []string{m.host}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := join(ctx, o); err != nil {
		t.Fatalf("join: %v\n%s", err, out)
	}
	if kc := kubeconfigServer(t, o.kubeconfig); kc != o.endpoint {
		t.Errorf("kubeconfig names %s, want the balancer %s", kc, o.endpoint)
	}

	// The next boot keeps the kubelet's certificate, and the kubeconfig of
	// a boot that went to the master directly follows this one's endpoint.
	certPEM, keyPEM, err := m.ca.Issue(pki.CertRequest{CommonName: "system:node:w1", Organization: []string{"system:nodes"}, Client: true, Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(o.certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(o.certDir, "kubelet-client-current.pem"), append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(o.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	direct, err := pki.RewriteKubeconfigServer(data, m.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(o.kubeconfig, direct, 0o600); err != nil {
		t.Fatal(err)
	}
	creates := m.creates.Load()
	if err := join(ctx, o); err != nil {
		t.Fatalf("join again: %v\n%s", err, out)
	}
	if m.creates.Load() != creates {
		t.Error("a new certificate asked for while the kubelet's is valid")
	}
	if kc := kubeconfigServer(t, o.kubeconfig); kc != o.endpoint {
		t.Errorf("the earlier boot's kubeconfig still names %s, want the balancer %s", kc, o.endpoint)
	}
}

func kubeconfigServer(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		t.Fatal(err)
	}
	return kc.Server
}

// When no master answers the balancer, join's messages name the masters
// and where to look, not just the balancer's address.
func TestJoinNamesTheMastersBehindTheAPILB(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	lb := startLB(t, dead)
	host := lb.Addr().String()
	out := &testutil.SyncBuffer{}
	dir := t.TempDir()
	o := &joinOptions{endpoint: "https://" + host, masters: []string{dead}, caHash: "sha256:00", token: testToken, nodeName: "w1",
		caOut: filepath.Join(dir, "ca.crt"), kubeconfig: filepath.Join(dir, "kubelet.conf"), certDir: dir,
		out: out, poll: 5 * time.Millisecond, report: time.Hour, request: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = join(ctx, o)
	want := "cannot reach a master through the node's API load balancer at " + host + " (masters " + dead + "): "
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "kiln-node logs api-lb") {
		t.Fatalf("err %v, want it to say %q and where to look", err, want)
	}
	if lines := written(out); len(lines) != 1 || !strings.HasPrefix(lines[0], "join: waiting for the masters ("+dead+") through the node's API load balancer at "+host+": not reachable: ") {
		t.Errorf("lines %q", lines)
	}
}
