package nodeclient

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"kiln/pki"
)

func TestVerifyNode(t *testing.T) {
	ca, _ := pki.NewCA("kiln-ca", time.Hour)
	other, _ := pki.NewCA("other-ca", time.Hour)
	leaf := func(c *pki.CA, cn string, dns ...string) []*x509.Certificate {
		certPEM, _, err := c.Issue(pki.CertRequest{CommonName: cn, DNSNames: dns, IPs: []net.IP{net.ParseIP("10.0.0.5")}, Server: true, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(certPEM)
		x, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return []*x509.Certificate{x}
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	node := leaf(ca, "system:node:w1", "w1")
	for _, c := range []struct {
		name  string
		chain []*x509.Certificate
		want  string // "" ok
		as    string
	}{
		{"by name", node, "", "w1"},
		{"by address", node, "", "10.0.0.5"},
		{"any node (a forward)", node, "", ""},
		{"another name", node, "issued for w1, 10.0.0.5, not w2", "w2"},
		{"not a node's", leaf(ca, "kube-apiserver", "w1"), "not a node's certificate", ""},
		{"another CA", leaf(other, "system:node:w1", "w1"), "not this cluster's CA", "w1"},
		{"none", nil, "sent none", "w1"},
	} {
		err := VerifyNode(c.chain, roots, c.as)
		if (err == nil) != (c.want == "") || (err != nil && (!strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrNotVerified))) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}

	// A node at its address: its own certificate (CN system:node:NODE),
	// issued for the address.
	for _, c := range []struct {
		name       string
		chain      []*x509.Certificate
		node, addr string
		want       string // "" ok
	}{
		{"its own", node, "w1", "10.0.0.5", ""},
		{"another node's at the address", node, "w2", "10.0.0.5", `serves the certificate of "system:node:w1", not of node w2`},
		{"its own at another address", node, "w1", "10.0.0.6", "not 10.0.0.6"},
		{"not a node's", leaf(ca, "kube-apiserver", "w1"), "w1", "10.0.0.5", `"kube-apiserver", not of node w1`},
		{"another CA", leaf(other, "system:node:w1", "w1"), "w1", "10.0.0.5", "not this cluster's CA"},
		{"no address", node, "w1", "", "no node name or address"},
		{"no node", node, "", "10.0.0.5", "no node name or address"},
	} {
		err := VerifyNodeAt(c.chain, roots, c.node, c.addr)
		if (err == nil) != (c.want == "") || (err != nil && (!strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrNotVerified))) {
			t.Errorf("at: %s: %v, want %q", c.name, err, c.want)
		}
		if c.name == "another CA" && !errors.As(err, new(x509.UnknownAuthorityError)) {
			t.Errorf("at: another CA: %v does not wrap x509.UnknownAuthorityError", err)
		}
	}
}

func TestRelayPath(t *testing.T) {
	if p, err := RelayPath("w1", "10.0.0.5", "/logs/etcd"); err != nil || p != "/relay/w1/10.0.0.5/logs/etcd" {
		t.Errorf("%q %v", p, err)
	}
	for _, c := range [][2]string{{"", "10.0.0.5"}, {"a/b", "10.0.0.5"}, {"w1", "host"}} {
		if _, err := RelayPath(c[0], c[1], "/x"); err == nil {
			t.Errorf("%q accepted", c)
		}
	}
}
