package apilb

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kiln/internal/testutil"
	"kiln/pki"
)

// sliceList is what an API server answers for the kubernetes Service's
// EndpointSlices (trimmed of managedFields), with the ports and endpoints
// given.
func sliceList(port int, endpoints string) string {
	return fmt.Sprintf(`{
  "kind": "EndpointSliceList",
  "apiVersion": "discovery.k8s.io/v1",
  "metadata": {"resourceVersion": "1234"},
  "items": [
    {
      "metadata": {
        "name": "kubernetes",
        "namespace": "default",
        "uid": "5c1e1f3a-2b7e-4a59-9d3e-0f6a1b2c3d4e",
        "resourceVersion": "231",
        "generation": 3,
        "creationTimestamp": "2025-01-01T00:00:00Z",
        "labels": {
          "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io",
          "kubernetes.io/service-name": "kubernetes"
        }
      },
      "addressType": "IPv4",
      "endpoints": [%s],
      "ports": [{"name": "https", "protocol": "TCP", "port": %d}]
    }
  ]
}`, endpoints, port)
}

func TestParseEndpointSlices(t *testing.T) {
	three := `{"addresses": ["10.0.0.10"], "conditions": {"ready": true, "serving": true, "terminating": false}},
		{"addresses": ["10.0.0.11"], "conditions": {"ready": false, "serving": false, "terminating": true}},
		{"addresses": ["10.0.0.12"], "conditions": {}}`
	for _, tc := range []struct {
		name, json string
		want       []string
	}{
		{"ready, not ready, unknown", sliceList(6443, three), []string{"10.0.0.10:6443", "10.0.0.12:6443"}},
		{"none", `{"kind": "EndpointSliceList", "items": []}`, nil},
		{"IPv6, the port named https among others, FQDN ignored", `{"items": [
			{"addressType": "IPv6", "endpoints": [{"addresses": ["fd00::10"]}],
			 "ports": [{"name": "metrics", "port": 9000, "protocol": "TCP"}, {"name": "https", "port": 443}]},
			{"addressType": "FQDN", "endpoints": [{"addresses": ["api.example"]}], "ports": [{"port": 6443}]},
			{"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.9"]}], "ports": [{"port": 53, "protocol": "UDP"}]}]}`,
			[]string{"[fd00::10]:443"}},
	} {
		got, err := parseEndpointSlices([]byte(tc.json))
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := parseEndpointSlices([]byte(`<html>`)); err == nil {
		t.Error("HTML parsed")
	}
}

// apiServer answers the kubernetes Service's EndpointSlices to clients
// with a certificate of ca, over TLS with a certificate of ca for
// 127.0.0.1 (as kiln's API server has).
type apiServer struct {
	*httptest.Server
	answer   atomic.Value // string
	mu       sync.Mutex
	requests int
	users    []string // the client certificates' names
}

func startAPIServer(t *testing.T, ca *pki.CA) *apiServer {
	t.Helper()
	s := &apiServer{}
	s.answer.Store(`{"kind": "EndpointSliceList", "items": []}`)
	certPEM, keyPEM, err := ca.Issue(pki.CertRequest{CommonName: "kube-apiserver", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices" ||
			r.URL.Query().Get("labelSelector") != "kubernetes.io/service-name=kubernetes" {
			http.NotFound(w, r)
			return
		}
		s.mu.Lock()
		s.requests++
		s.users = append(s.users, r.TLS.PeerCertificates[0].Subject.CommonName)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(s.answer.Load().(string)))
	}))
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func (s *apiServer) seen() (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, slices.Clone(s.users)
}

// The masters are learnt from the cluster, through the LB, with the
// kubelet's current certificate; an empty list keeps the seeds; the
// learnt set replaces them, and the seeds take over when it is all down.
func TestLearnsTheMasters(t *testing.T) {
	ca, err := pki.NewCA("unit-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	api := startAPIServer(t, ca)
	seed := strings.TrimPrefix(api.URL, "https://")
	dir := t.TempDir()
	kubeconfig, current := filepath.Join(dir, "kubeconfig"), filepath.Join(dir, "kubelet-client-current.pem")

	lb, log := run(t, fast(Options{Seeds: []string{seed}, Kubeconfig: kubeconfig, ClientCert: current}))
	time.Sleep(300 * time.Millisecond)
	if n, _ := api.seen(); n != 0 {
		t.Fatalf("%d requests before the kubeconfig exists", n)
	}

	// The join's kubeconfig names the LB's address (any name the API
	// server's certificate has); the kubelet has rotated its certificate.
	oldCert, oldKey, err := ca.Issue(pki.CertRequest{CommonName: "system:node:joined", Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	kc, err := pki.Kubeconfig{ClusterName: "unit", Server: "https://127.0.0.1:6444", UserName: "system:node:w1",
		CAPEM: ca.CertPEM, CertPEM: oldCert, KeyPEM: oldKey}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	newCert, newKey, err := ca.Issue(pki.CertRequest{CommonName: "system:node:rotated", Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(current, append(newCert, newKey...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}

	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, "the empty list noted", testutil.Until("a line", func() bool {
		return strings.Contains(log.String(), "lists no ready API server")
	}))
	if got := lb.Backends(); len(got) != 1 || !got[seed] {
		t.Errorf("after an empty list the backends are %v, want the seed %s", got, seed)
	}
	if _, users := api.seen(); users[0] != "system:node:rotated" {
		t.Errorf("learnt as %s, want the kubelet's current certificate's user", users[0])
	}

	learnt := startEcho(t, "learnt", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(learnt.addr())
	api.answer.Store(sliceList(atoi(t, port), `{"addresses": ["127.0.0.1"], "conditions": {"ready": true}},
		{"addresses": ["192.0.2.11"], "conditions": {"ready": false}}`))
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, "the learnt set", testutil.Until("backends "+learnt.addr(), func() bool {
		got := lb.Backends()
		return len(got) == 1 && got[learnt.addr()]
	}))
	if c := dial(t, lb); c.backend != "learnt" {
		t.Errorf("a connection went to %s, want the learnt backend", c.backend)
	}
	if !strings.Contains(log.String(), "backends "+learnt.addr()+" (learnt from the cluster") {
		t.Errorf("no line says the set changed:\n%s", log)
	}

	// The learnt backend dies: the seed still answers, the list is read
	// through it.
	learnt.stop()
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, "the learnt backend down", testutil.Until("down", func() bool {
		return !lb.Backends()[learnt.addr()]
	}))
	before, _ := api.seen()
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, "the list read through the seed", testutil.Until("more requests", func() bool {
		n, _ := api.seen()
		return n > before
	}))
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// With CheckTLS a backend is up once it completes a handshake: one that
// accepts connections but speaks no TLS is down.
func TestCheckTLS(t *testing.T) {
	ca, err := pki.NewCA("unit-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	api := startAPIServer(t, ca)
	good := strings.TrimPrefix(api.URL, "https://")
	wedged := startEcho(t, "wedged", "127.0.0.1:0") // accepts, speaks no TLS
	lb, _ := run(t, fast(Options{Seeds: []string{good, wedged.addr()}, CheckTLS: true}))
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, "the checks", testutil.Until("good up, wedged down", func() bool {
		up := lb.Backends()
		return up[good] && !up[wedged.addr()]
	}))
}
