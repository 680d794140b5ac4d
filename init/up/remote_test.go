package up

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/pki"
)

func TestRemoteStatusOnlyForAdmins(t *testing.T) {
	ca, err := pki.NewCA("kiln-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.NewCA("other-ca", time.Hour)
	caPath := filepath.Join(t.TempDir(), "ca.crt")
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "status") })
	addr := freeAddr(t)
	stop, err := serveRemoteStatus(addr, caPath, "", "", h, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	get := func(c *pki.CA, groups ...string) error {
		var certs []tls.Certificate
		if c != nil {
			certPEM, keyPEM, err := c.Issue(pki.CertRequest{CommonName: "someone", Organization: groups, Client: true, Validity: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			kp, _ := tls.X509KeyPair(certPEM, keyPEM)
			certs = []tls.Certificate{kp}
		}
		cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: certs}}}
		resp, err := cl.Get("https://" + addr + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	if err := get(ca, "system:masters"); err == nil {
		t.Fatal("served before the node knows the CA")
	}
	os.WriteFile(caPath, ca.CertPEM, 0o644)
	if err := get(ca, "system:masters"); err != nil {
		t.Fatalf("admin refused: %v", err)
	}
	for name, c := range map[string]func() error{
		"no certificate":    func() error { return get(nil) },
		"not an admin":      func() error { return get(ca, "system:nodes") },
		"another cluster's": func() error { return get(other, "system:masters") },
	} {
		if c() == nil {
			t.Errorf("%s: served", name)
		}
	}
}

// The volumes group may PUT and DELETE one volume, by its path, and
// nothing else.
func TestVolumeRequest(t *testing.T) {
	vol := nodeapi.PathVolumes + "pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6"
	for _, tc := range []struct {
		method, path string
		ok           bool
	}{
		{"PUT", vol, true},
		{"DELETE", vol, true},
		{"GET", vol, false},
		{"HEAD", vol, false},
		{"POST", vol, false},
		{"PATCH", vol, false},
		{"OPTIONS", vol, false},
		{"PUT", nodeapi.PathVolumes, false},
		{"DELETE", nodeapi.PathVolumes, false},
		{"PUT", vol + "/x", false},
		{"PUT", "/volumes", false},
		{"PUT", "/status", false},
		{"DELETE", "/etcd/members/1", false},
		{"PUT", "/other" + vol, false},
		{"PUT", nodeapi.PathVolumes + "..%2Fpki", false},
	} {
		r := httptest.NewRequest(tc.method, tc.path, nil)
		if got := volumeRequest(r); got != tc.ok {
			t.Errorf("%s %s: %t, want %t", tc.method, tc.path, got, tc.ok)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{mustSelfSigned(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func mustSelfSigned(t *testing.T) tls.Certificate {
	c, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	return c
}
