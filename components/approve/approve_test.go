package approve

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func csrFor(t *testing.T, user, cn string, org, dns []string, ips ...string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn, Organization: org}, DNSNames: dns}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "csr-1"},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: certificatesv1.KubeletServingSignerName,
			Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth},
			Username:   user,
			Groups:     []string{"system:nodes", "system:authenticated"},
		},
	}
}

func nodeWith(name string, ips ...string) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return n
}

func TestKubeletServing(t *testing.T) {
	nodes := []corev1.Node{nodeWith("kiln-master", "10.120.0.10"), nodeWith("w1", "10.120.0.11")}
	org := []string{"system:nodes"}
	for _, tc := range []struct {
		name string
		csr  *certificatesv1.CertificateSigningRequest
		want Verdict
		why  string
	}{
		{"own names", csrFor(t, "system:node:w1", "system:node:w1", org, []string{"w1"}, "10.120.0.11"), Approve, ""},
		{"the master's address", csrFor(t, "system:node:w1", "system:node:w1", org, []string{"w1"}, "10.120.0.10"), Deny, "not one of node w1's"},
		{"the master's name", csrFor(t, "system:node:w1", "system:node:w1", org, []string{"kiln-master"}, "10.120.0.11"), Deny, `DNS name "kiln-master"`},
		{"another subject", csrFor(t, "system:node:w1", "system:node:kiln-master", org, []string{"w1"}), Deny, "not the requesting node"},
		{"not a node", csrFor(t, "alice", "system:node:w1", org, []string{"w1"}), Deny, "not by a node"},
		{"wrong organization", csrFor(t, "system:node:w1", "system:node:w1", []string{"system:masters"}, []string{"w1"}), Deny, "organization"},
		{"no names", csrFor(t, "system:node:w1", "system:node:w1", org, nil), Deny, "no DNS name"},
		{"unregistered node", csrFor(t, "system:node:w2", "system:node:w2", org, []string{"w2"}, "10.120.0.12"), Wait, "not registered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := KubeletServing(tc.csr, nodes)
			if d.Verdict != tc.want || !strings.Contains(d.Reason, tc.why) {
				t.Errorf("got %v %q, want %v containing %q", d.Verdict, d.Reason, tc.want, tc.why)
			}
		})
	}

	// Two nodes claiming one address: neither gets a certificate for it.
	dup := append(nodes, nodeWith("w3", "10.120.0.11"))
	if d := KubeletServing(csrFor(t, "system:node:w1", "system:node:w1", org, []string{"w1"}, "10.120.0.11"), dup); d.Verdict != Deny || !strings.Contains(d.Reason, "also node w3's") {
		t.Errorf("shared address: %v %q", d.Verdict, d.Reason)
	}
	// Client-auth usage, another signer, already decided.
	c := csrFor(t, "system:node:w1", "system:node:w1", org, []string{"w1"}, "10.120.0.11")
	c.Spec.Usages = append(c.Spec.Usages, certificatesv1.UsageClientAuth)
	if d := KubeletServing(c, nodes); d.Verdict != Deny {
		t.Errorf("client auth usage: %v", d.Verdict)
	}
	c = csrFor(t, "system:node:w1", "system:node:w1", org, []string{"w1"}, "10.120.0.11")
	c.Spec.SignerName = certificatesv1.KubeAPIServerClientKubeletSignerName
	if d := KubeletServing(c, nodes); d.Verdict != Skip {
		t.Errorf("another signer: %v", d.Verdict)
	}
	c = csrFor(t, "system:node:w1", "system:node:w1", org, []string{"w1"}, "10.120.0.11")
	c.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{Condition(Decision{Verdict: Approve})}
	if d := KubeletServing(c, nodes); d.Verdict != Skip {
		t.Errorf("already approved: %v", d.Verdict)
	}
	// A tampered request (signature over other bytes) is refused.
	c = csrFor(t, "system:node:w1", "system:node:w1", org, []string{"w1"}, "10.120.0.11")
	blk, _ := pem.Decode(c.Spec.Request)
	blk.Bytes[len(blk.Bytes)-5] ^= 0xff
	c.Spec.Request = pem.EncodeToMemory(blk)
	if d := KubeletServing(c, nodes); d.Verdict != Deny {
		t.Errorf("tampered request: %v %q", d.Verdict, d.Reason)
	}
}
