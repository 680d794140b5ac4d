package approve

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// joinCSR is what kiln's join makes: a client CSR for system:node:NAME,
// proved with the identity derived from secret.
func joinCSR(t *testing.T, name, secret string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	req := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	return &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "node-csr-x", Annotations: Prove(IdentityKey([]byte(secret)), req)},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request: req, SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName,
			Usages:   []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
			Username: "system:bootstrap:abcdef", Groups: []string{"system:bootstrappers", "system:bootstrappers:kiln:worker", "system:authenticated"},
		},
	}
}

func TestNodeClient(t *testing.T) {
	nodes := []corev1.Node{nodeWith("kiln-master", "10.120.0.10"), nodeWith("w1", "10.120.0.11"), nodeWith("legacy", "10.120.0.13")}
	keyOf := func(secret string) string {
		return Prove(IdentityKey([]byte(secret)), nil)[IdentityKeyAnnotation]
	}
	bound := map[string]string{"kiln-master": ControlPlane, "w1": keyOf("secret-of-w1")}

	d, bind := NodeClient(joinCSR(t, "w2", "secret-of-w2"), nodes, bound)
	if d.Verdict != Approve || bind != (Binding{Name: "w2", Key: keyOf("secret-of-w2")}) {
		t.Errorf("a new name: %v %q bind %q", d.Verdict, d.Reason, bind)
	}
	if d, bind := NodeClient(joinCSR(t, "w1", "secret-of-w1"), nodes, bound); d.Verdict != Approve || bind != (Binding{}) || d.Code != "KilnNodeIdentity" {
		t.Errorf("w1 rejoining: %v %q bind %q", d.Verdict, d.Reason, bind)
	}
	for _, tc := range []struct{ name, secret, why string }{
		{"w1", "another machine", "held by another machine"},
		{"kiln-master", "secret-of-w1", "is a master's"},
		{"legacy", "any", "holds no kiln identity"},
	} {
		if d, _ := NodeClient(joinCSR(t, tc.name, tc.secret), nodes, bound); d.Verdict != Deny || !strings.Contains(d.Reason, tc.why) {
			t.Errorf("%s with %q: %v %q, want Deny %q", tc.name, tc.secret, d.Verdict, d.Reason, tc.why)
		}
	}
	// A proof copied from another request does not cover this one.
	c := joinCSR(t, "w1", "mine")
	c.Annotations = joinCSR(t, "w1", "secret-of-w1").Annotations
	if d, _ := NodeClient(c, nodes, bound); d.Verdict != Deny || !strings.Contains(d.Reason, "no valid proof") {
		t.Errorf("a copied proof: %v %q", d.Verdict, d.Reason)
	}
	c = joinCSR(t, "w4", "x")
	c.Annotations = nil
	if d, _ := NodeClient(c, nodes, bound); d.Verdict != Deny {
		t.Errorf("no proof: %v", d.Verdict)
	}
	// Renewals by the node itself are not kiln's to decide.
	c = joinCSR(t, "w1", "secret-of-w1")
	c.Spec.Username, c.Spec.Groups = "system:node:w1", []string{"system:nodes"}
	if d, _ := NodeClient(c, nodes, bound); d.Verdict != Skip {
		t.Errorf("a renewal: %v", d.Verdict)
	}
	c = joinCSR(t, "w1", "secret-of-w1")
	c.Spec.Usages = append(c.Spec.Usages, certificatesv1.UsageServerAuth)
	if d, _ := NodeClient(c, nodes, bound); d.Verdict != Deny {
		t.Errorf("server auth usage: %v", d.Verdict)
	}
}
