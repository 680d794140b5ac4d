//go:build integration

package host

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/pki"
)

// TestCertificateRenewal runs a master whose certificates live three
// minutes (certificates.validity) past the end of every certificate it
// issued at start, while a client keeps using the API over a new
// connection each time: each certificate is renewed in place, no
// component is restarted, and nothing fails.
func TestCertificateRenewal(t *testing.T) {
	dir := t.TempDir()
	clusterDir := genCluster(t, dir)
	kc := filepath.Join(clusterDir, "admin.kubeconfig")
	dataDir := filepath.Join(dir, "data")
	config := writeConfig(t, dir, "certificates:\n  validity: 3m\n")
	n := startNode(t, clusterDir, dataDir, config)
	n.waitReady(kc, 3*time.Minute)
	testutil.Eventually(t, 2*time.Minute, poll, "every component ready", func() error { return allReady(n.status()) })

	first := certsOf(t, clusterDir)
	if first.Validity != "3m0s" {
		t.Fatalf("validity %q", first.Validity)
	}
	issued := map[string]time.Time{}
	var lastEnd time.Time
	for _, c := range first.Certs {
		if c.RenewedBy != nodeapi.RenewedByNode {
			continue
		}
		if c.Error != "" {
			t.Fatalf("%s: %s", c.Name, c.Error)
		}
		issued[c.Name] = c.NotAfter
		if c.NotAfter.After(lastEnd) {
			lastEnd = c.NotAfter
		}
	}
	if len(issued) < 12 {
		t.Fatalf("the master issued only %d certificates: %v", len(issued), issued)
	}
	apiFirst := servedCert(t, fmt.Sprintf("%s:%d", address, apiPort), nil)
	etcdFirst := servedCert(t, address+":12379", etcdClient(t, dataDir))

	// The client: the admin's certificate (the cluster directory's, not
	// the node's) over a new TLS connection every time, so each request
	// checks the API server's serving certificate of the moment, and
	// each write goes through the API server's etcd client.
	server, tlsCfg, err := pki.LoadKubeconfigTLS(kc)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true}}
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			body := fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"renewal-%d"},"data":{"i":"%d"}}`, i, i)
			resp, err := hc.Post(server+"/api/v1/namespaces/default/configmaps", "application/json", strings.NewReader(body))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					err = fmt.Errorf("%s", resp.Status)
				}
			}
			if err != nil {
				failed.Add(1)
				mu.Lock()
				failures = append(failures, time.Now().Format(time.TimeOnly)+" "+err.Error())
				mu.Unlock()
				continue
			}
			ok.Add(1)
		}
	}()

	wait := time.Until(lastEnd) + 30*time.Second
	t.Logf("every certificate the master issued at start ends by %s: waiting %s", lastEnd.Format(time.TimeOnly), wait.Round(time.Second))
	time.Sleep(wait)
	close(stop)
	<-done

	later := certsOf(t, clusterDir)
	for _, c := range later.Certs {
		end, ok := issued[c.Name]
		if !ok {
			continue
		}
		if c.Error != "" || !c.NotAfter.After(end) || !c.NotAfter.After(time.Now()) {
			t.Errorf("%s: ends %s (%s), was %s: not renewed", c.Name, c.NotAfter.Format(time.TimeOnly), c.Error, end.Format(time.TimeOnly))
		}
	}
	if c := servedCert(t, fmt.Sprintf("%s:%d", address, apiPort), nil); !c.NotAfter.After(apiFirst.NotAfter) {
		t.Errorf("the API server still serves the certificate that ends %s", c.NotAfter)
	}
	if c := servedCert(t, address+":12379", etcdClient(t, dataDir)); !c.NotAfter.After(etcdFirst.NotAfter) {
		t.Errorf("etcd still serves the certificate that ends %s", c.NotAfter)
	}
	st := n.status()
	if err := allReady(st); err != nil {
		t.Error(err)
	}
	for _, s := range st.Services {
		if s.Restarts != 0 {
			t.Errorf("%s restarted %d times (last exit %q): a renewal needs no restart", s.Name, s.Restarts, s.LastExit)
		}
	}
	// The controller-manager still acts, its first client certificate
	// long expired: a Deployment gets its ReplicaSet.
	k := kubectl(kc)
	k.Must(t, "create", "deployment", "after-renewal", "--image=kiln.dev/pause:none")
	testutil.Eventually(t, time.Minute, time.Second, "the Deployment's ReplicaSet", func() error {
		out, err := k.Run("get", "replicasets", "-l", "app=after-renewal", "-o", "name")
		if err == nil && out == "" {
			err = fmt.Errorf("none yet")
		}
		return err
	})
	if renewed := strings.Count(n.output(), "certificates: renewed "); renewed < len(issued) {
		t.Errorf("the console says %d renewals, want at least %d", renewed, len(issued))
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("figure: %d requests across the renewals, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 || ok.Load() < 60 {
		t.Errorf("%d requests ok, %d failed:\n%s", ok.Load(), failed.Load(), strings.Join(failures, "\n"))
	}
	if out, err := e2e.Kiln("certs", "--node", address, "--cluster", clusterDir); err == nil {
		t.Logf("kiln certs:\n%s", out)
	}
}

// certsOf asks the node for its certificates, as kiln certs does.
func certsOf(t *testing.T, clusterDir string) nodeapi.Certs {
	t.Helper()
	out, err := e2e.Kiln("certs", "--node", address, "--cluster", clusterDir, "--json")
	if err != nil {
		t.Fatalf("kiln certs: %v\n%s", err, out)
	}
	var c nodeapi.Certs
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatalf("kiln certs --json: %v\n%s", err, out)
	}
	return c
}

// etcdClient is the TLS configuration of a client of the node's etcd.
func etcdClient(t *testing.T, dataDir string) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dataDir, "pki/apiserver-etcd-client.crt"), filepath.Join(dataDir, "pki/apiserver-etcd-client.key"))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// servedCert is the certificate served at addr on a new connection (not
// verified: only read).
func servedCert(t *testing.T, addr string, cfg *tls.Config) *x509.Certificate {
	t.Helper()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg = cfg.Clone()
	cfg.InsecureSkipVerify = true
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("%s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}
