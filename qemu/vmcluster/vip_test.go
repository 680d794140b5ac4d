package vmcluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/pki"
)

func TestCheckVIP(t *testing.T) {
	for _, ok := range []Options{{Masters: 3}, {Masters: 3, VIP: DefaultVIP}, {Masters: 5, VIP: "10.120.0.1"}, {Masters: 3, VIP: "10.120.0.9"}} {
		if err := checkVIP(&ok); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	for _, bad := range []struct {
		o    Options
		want string
	}{
		{Options{Masters: 1, VIP: DefaultVIP}, "needs several"},
		{Options{Masters: 3, VIP: "10.120.0.10"}, "below the nodes'"}, // the first master's
		{Options{Masters: 3, VIP: "10.120.0.0"}, "below the nodes'"},
		{Options{Masters: 3, VIP: "10.121.0.5"}, "below the nodes'"},
		{Options{Masters: 3, VIP: "vip"}, "10.120.0.0/24"},
	} {
		if err := checkVIP(&bad.o); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%+v: %v, want %q", bad.o, err, bad.want)
		}
	}
}

// Every node's config drive has the VIP; a worker's API endpoint is it.
func TestNodeConfigVIP(t *testing.T) {
	c := &Cluster{opts: Options{Masters: 3, VIP: DefaultVIP}}
	for i := 1; i <= 3; i++ {
		c.Nodes = append(c.Nodes, &Node{Name: MasterNameOf(i), Role: node.RoleMaster, Address: fmt.Sprintf("%s%d", subnetPrefix, masterHost+i-1)})
	}
	worker := &Node{Name: "kiln-worker-1", Role: node.RoleWorker, Address: subnetPrefix + "13", secret: strings.Repeat("s", 32)}
	c.Nodes = append(c.Nodes, worker)
	for _, n := range c.Nodes {
		base := node.Default()
		base.Role = n.Role
		cfg, err := node.Overlay(base, c.nodeConfig(n))
		if err != nil {
			t.Fatalf("%s: %v\n%s", n.Name, err, c.nodeConfig(n))
		}
		if cfg.ControlPlane.VIP != DefaultVIP || len(cfg.ControlPlane.Masters) != 3 {
			t.Errorf("%s: controlPlane %+v", n.Name, cfg.ControlPlane)
		}
		if n.Role == node.RoleWorker && cfg.APIEndpoint != "https://"+DefaultVIP+":6443" {
			t.Errorf("worker's apiEndpoint %s, want the VIP", cfg.APIEndpoint)
		}
	}
	c.opts.VIP = ""
	if y := string(c.nodeConfig(worker)); strings.Contains(y, "vip") || !strings.Contains(y, "https://10.120.0.10:6443") {
		t.Errorf("without a VIP:\n%s", y)
	}
}

func TestOrder(t *testing.T) {
	bs := []backend{{name: "a"}, {name: "b", vip: true}, {name: "c"}}
	for start, want := range map[int]string{0: "b a c", 1: "b c a", 2: "b c a", 3: "b a c"} {
		var got []string
		for _, b := range order(bs, start) {
			got = append(got, b.name)
		}
		if strings.Join(got, " ") != want {
			t.Errorf("start %d: %v, want %s", start, got, want)
		}
	}
}

// With a VIP, every connection goes to the master that holds it, and to
// the new holder once the host has seen it move; while the holder is
// gone and no other is known, the others take the connections in turn.
func TestEndpointPrefersVIPHolder(t *testing.T) {
	var mu sync.Mutex
	gone := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{}), "c": make(chan struct{})}
	addrs := map[string]string{"a": echoServer(t, "a"), "b": echoServer(t, "b"), "c": echoServer(t, "c")}
	holder := "b"
	e, err := newEndpoint(0, func() []backend {
		mu.Lock()
		defer mu.Unlock()
		var bs []backend
		for _, n := range []string{"a", "b", "c"} {
			bs = append(bs, backend{name: n, addr: addrs[n], gone: gone[n], vip: n == holder})
		}
		return bs
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ask := func() string {
		t.Helper()
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", e.port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "hi\n")
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		name, _, _ := strings.Cut(got, " ")
		return name
	}
	for range 4 {
		if got := ask(); got != "b" {
			t.Fatalf("with b holding the VIP, a connection went to %s", got)
		}
	}
	// b's VM stops; the host has not yet seen who took the VIP over.
	close(gone["b"])
	seen := map[string]bool{}
	for range 4 {
		seen[ask()] = true
	}
	if !seen["a"] || !seen["c"] || seen["b"] {
		t.Errorf("with the holder gone and no new one known, connections went to %v; want a and c in turn", seen)
	}
	mu.Lock()
	holder = "c"
	mu.Unlock()
	for range 4 {
		if got := ask(); got != "c" {
			t.Fatalf("with c holding the VIP, a connection went to %s", got)
		}
	}
}

// The host reads a master's status from its node API with the cluster's
// admin certificate, and finds whether it holds the VIP there.
func TestNodeAPIStatus(t *testing.T) {
	dir := t.TempDir()
	cl, err := cluster.Generate(filepath.Join(dir, "cluster"), cluster.Options{Name: "vip"})
	if err != nil {
		t.Fatal(err)
	}
	var gotUser string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) > 0 {
			gotUser = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		if r.URL.Path != nodeapi.PathStatus {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(nodeapi.Status{VIP: &nodeapi.VIPStatus{Address: DefaultVIP, Held: true}})
	}))
	// The master's serving certificate, as its kubelet has it: the
	// cluster CA's, for its name.
	certPEM, keyPEM, err := cl.CA.Issue(pki.CertRequest{CommonName: "system:node:kiln-master-1", DNSNames: []string{"kiln-master-1"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	serving, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert, Certificates: []tls.Certificate{serving}}
	srv.StartTLS()
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port

	st, err := ReadNodeStatus(context.Background(), cl.Paths().AdminKubeconfig, port)
	if err != nil {
		t.Fatal(err)
	}
	if st.VIP == nil || !st.VIP.Held || st.VIP.Address != DefaultVIP {
		t.Errorf("VIP %+v", st.VIP)
	}
	if gotUser != cluster.AdminUser {
		t.Errorf("the node saw client %q, want the admin certificate (%s)", gotUser, cluster.AdminUser)
	}
	c := &Cluster{}
	if _, err := c.NodeStatus(context.Background(), &Node{Name: "kiln-worker-1"}); err == nil {
		t.Error("a node without a node API forward answered")
	}
}
