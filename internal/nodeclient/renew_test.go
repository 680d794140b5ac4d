package nodeclient

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"kiln/pki"
)

// A client made from files presents the certificate the files hold at
// each handshake: one the node renewed in place is used without a new
// client.
func TestFromCertFilesReloads(t *testing.T) {
	ca, _ := pki.NewCA("kiln-ca", time.Hour)
	pair := filepath.Join(t.TempDir(), "client.pem")
	write := func(cn string) {
		certPEM, keyPEM, err := ca.Issue(pki.CertRequest{CommonName: cn, Client: true, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteFile(pair, append(certPEM, keyPEM...), true); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	c, err := FromCertFiles(pair, pair, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	cn := func() string {
		cert, err := c.TLSConfig("").GetClientCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return mustParse(t, cert.Certificate[0]).Subject.CommonName
	}
	if got := cn(); got != "first" {
		t.Errorf("presents %q", got)
	}
	write("renewed")
	if got := cn(); got != "renewed" {
		t.Errorf("after a renewal presents %q", got)
	}
	// A file that cannot be read: the one read first stands in.
	os.Remove(pair)
	if got := cn(); got != "first" {
		t.Errorf("without its file presents %q", got)
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
