package entry

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln/pki"
)

// apiServer serves TLS with a leaf issued by ca, the CA appended to the
// chain as kiln's API server does, and answers SelfSubjectReviews for the
// token "abcdef.0123456789abcdef" only.
func apiServer(t *testing.T, ca *pki.CA) *httptest.Server {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(pki.CertRequest{CommonName: "kube-apiserver", DNSNames: []string{"localhost"}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(append(certPEM, ca.CertPEM...), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer abcdef.0123456789abcdef" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"status":{"userInfo":{"username":"system:bootstrap:abcdef"}}}`))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func TestJoinChecksCAAndToken(t *testing.T) {
	ca, err := pki.NewCA("kiln-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := apiServer(t, ca)
	endpoint := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	ctx := context.Background()

	got, err := discoverCA(ctx, endpoint, pki.CAHash(ca.Cert))
	if err != nil {
		t.Fatalf("right pin: %v", err)
	}
	if !got.Equal(ca.Cert) {
		t.Fatal("discovered another certificate than the CA")
	}
	_, err = discoverCA(ctx, endpoint, pki.CAHash(other.Cert))
	if err == nil || !strings.Contains(err.Error(), "does not present the pinned cluster CA "+pki.CAHash(other.Cert)) || !strings.Contains(err.Error(), pki.CAHash(ca.Cert)) {
		t.Fatalf("wrong pin: %v", err)
	}

	if err := checkToken(ctx, endpoint, ca.Cert, "abcdef.0123456789abcdef"); err != nil {
		t.Fatalf("right token: %v", err)
	}
	err = checkToken(ctx, endpoint, ca.Cert, "abcdef.ffffffffffffffff")
	if err == nil || !strings.Contains(err.Error(), "refused bootstrap token abcdef") || strings.Contains(err.Error(), "ffff") {
		t.Fatalf("wrong token (the error must name the id, never the secret): %v", err)
	}
	if _, err := discoverCA(ctx, "https://localhost:1", pki.CAHash(ca.Cert)); err == nil || !strings.Contains(err.Error(), "cannot reach the master") {
		t.Fatalf("unreachable: %v", err)
	}
}

// A worker with a state disk keeps its kubelet's certificate across
// reboots: join asks for a new one only when it is not the node's, not
// the cluster CA's, or about to expire.
func TestValidKubeletCert(t *testing.T) {
	ca, err := pki.NewCA("kiln-ca", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other-ca", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write := func(issuer *pki.CA, cn string, validity time.Duration) string {
		certPEM, keyPEM, err := issuer.Issue(pki.CertRequest{CommonName: cn, Organization: []string{"system:nodes"}, Client: true, Validity: validity})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "kubelet-client-current.pem")
		if err := os.WriteFile(p, append(certPEM, keyPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, ok := validKubeletCert(write(ca, "system:node:w1", 24*time.Hour), ca.Cert, "system:node:w1"); !ok {
		t.Error("the node's own certificate was not kept")
	}
	for name, path := range map[string]string{
		"another node's": write(ca, "system:node:w2", 24*time.Hour),
		"another CA's":   write(other, "system:node:w1", 24*time.Hour),
		"expiring":       write(ca, "system:node:w1", 30*time.Minute),
		"missing":        filepath.Join(t.TempDir(), "none.pem"),
	} {
		if _, ok := validKubeletCert(path, ca.Cert, "system:node:w1"); ok {
			t.Errorf("%s certificate kept", name)
		}
	}
}
