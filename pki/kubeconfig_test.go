package pki

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// adminKubeconfig is a kubeconfig with a client certificate of ca.
func adminKubeconfig(t *testing.T, ca *CA, server string) Kubeconfig {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(CertRequest{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}, Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return Kubeconfig{ClusterName: "kiln", Server: server, UserName: "kubernetes-admin", CAPEM: ca.CertPEM, CertPEM: certPEM, KeyPEM: keyPEM}
}

func TestKubeconfigTLSConfig(t *testing.T) {
	ca := newTestCA(t)
	srvCert, srvKey, err := ca.Issue(CertRequest{CommonName: "kube-apiserver", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	clients := x509.NewCertPool()
	clients.AppendCertsFromPEM(ca.CertPEM)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clients}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below
	srv.StartTLS()
	defer srv.Close()

	// The server must be reached with the client certificate, and its own
	// certificate is checked against the kubeconfig's CA.
	kc := adminKubeconfig(t, ca, srv.URL)
	cfg, err := kc.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "kubernetes-admin" {
		t.Errorf("%s: %q", resp.Status, body)
	}

	// A server of another CA is refused.
	other := adminKubeconfig(t, newTestCA(t), srv.URL)
	other.CertPEM, other.KeyPEM = kc.CertPEM, kc.KeyPEM
	cfg, err = other.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	if resp, err := client.Get(srv.URL); err == nil {
		resp.Body.Close()
		t.Error("a server certificate of another CA was accepted")
	}
}

func TestKubeconfigTLSConfigErrors(t *testing.T) {
	ca := newTestCA(t)
	good := adminKubeconfig(t, ca, "https://127.0.0.1:6443")
	for name, tc := range map[string]struct {
		edit func(*Kubeconfig)
		want string
	}{
		"token only":     {func(k *Kubeconfig) { k.CertPEM, k.KeyPEM, k.Token = nil, nil, "a.b" }, "no client certificate"},
		"key mismatch":   {func(k *Kubeconfig) { k.KeyPEM = adminKubeconfig(t, ca, k.Server).KeyPEM }, "kubernetes-admin"},
		"no CA":          {func(k *Kubeconfig) { k.CAPEM = nil }, "no CA certificate"},
		"CA not PEM":     {func(k *Kubeconfig) { k.CAPEM = []byte("not a certificate") }, "no CA certificate"},
		"cert, no key":   {func(k *Kubeconfig) { k.KeyPEM = nil }, "no client certificate"},
		"key, no cert":   {func(k *Kubeconfig) { k.CertPEM = nil }, "no client certificate"},
		"garbage cert":   {func(k *Kubeconfig) { k.CertPEM = []byte("x") }, "kubernetes-admin"},
		"garbage key":    {func(k *Kubeconfig) { k.KeyPEM = []byte("x") }, "kubernetes-admin"},
		"good (control)": {func(*Kubeconfig) {}, ""},
	} {
		k := good
		tc.edit(&k)
		_, err := k.TLSConfig()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one mentioning %q", name, err, tc.want)
		}
	}
}

func TestRewriteKubeconfigServer(t *testing.T) {
	ca := newTestCA(t)
	kc := adminKubeconfig(t, ca, "https://10.0.0.10:6443")
	data, err := kc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	out, err := RewriteKubeconfigServer(data, "https://127.0.0.1:16443")
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseKubeconfig(out)
	if err != nil {
		t.Fatal(err)
	}
	want := kc
	want.Server = "https://127.0.0.1:16443"
	if !reflect.DeepEqual(back, want) {
		t.Errorf("rewritten:\n got %+v\nwant %+v", back, want)
	}
	if _, err := RewriteKubeconfigServer(data, "127.0.0.1:16443"); err == nil || !strings.Contains(err.Error(), "https://HOST:PORT") {
		t.Errorf("a server without https://: %v", err)
	}
	if _, err := RewriteKubeconfigServer([]byte("kind: Pod\n"), "https://127.0.0.1:1"); err == nil {
		t.Error("not a kubeconfig: no error")
	}
}

func TestLoadKubeconfigTLS(t *testing.T) {
	kc := adminKubeconfig(t, newTestCA(t), "https://127.0.0.1:6443")
	data, err := kc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "admin.kubeconfig"), filepath.Join(dir, "bad.kubeconfig")
	os.WriteFile(good, data, 0o600)
	os.WriteFile(bad, []byte("apiVersion: v1\nkind: Config\n"), 0o600)
	server, cfg, err := LoadKubeconfigTLS(good)
	if err != nil || server != kc.Server || len(cfg.Certificates) != 1 || cfg.RootCAs == nil {
		t.Fatalf("server %q, cfg %v, err %v", server, cfg, err)
	}
	for _, p := range []string{bad, filepath.Join(dir, "none")} {
		if _, _, err := LoadKubeconfigTLS(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want an error naming the file", p, err)
		}
	}
}
