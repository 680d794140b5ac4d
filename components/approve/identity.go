package approve

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
)

// A node name belongs to the machine that first joined with it. Each
// machine holds a per-node secret (its node config's nodeSecret, given by
// kiln pxe serve or kiln cluster; or one kept on its state disk); from it
// kiln derives an Ed25519 identity key. The join task signs its client
// certificate request with that key and puts the public key and the
// signature on the CSR object (annotations: they are public, and the
// signature covers this request only). The approver binds a new name to
// the public key in the ConfigMap IdentitiesConfigMap and refuses a request
// for a bound name with another key: a holder of the bootstrap token cannot
// take a name another machine holds.
const (
	IdentityKeyAnnotation   = "kiln.dev/node-identity"
	IdentityProofAnnotation = "kiln.dev/node-identity-proof"
	// IdentitiesConfigMap (in kube-system) maps node names to the base64
	// public key that holds each, or ControlPlane for a master's name.
	IdentitiesConfigMap = "kiln-node-identities"
	// ControlPlane marks a name held by a master: its kubelet's
	// credentials come from the CA, never from a bootstrap request.
	ControlPlane = "control-plane"
)

// IdentityKey derives a node's identity key from its per-node secret.
func IdentityKey(secret []byte) ed25519.PrivateKey {
	seed := sha256.Sum256(append([]byte("kiln node identity v1\x00"), secret...))
	return ed25519.NewKeyFromSeed(seed[:])
}

// Prove returns the annotations that prove the request (the CSR's PEM
// spec.request) was made by the holder of key.
func Prove(key ed25519.PrivateKey, request []byte) map[string]string {
	return map[string]string{
		IdentityKeyAnnotation:   base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)),
		IdentityProofAnnotation: base64.StdEncoding.EncodeToString(ed25519.Sign(key, request)),
	}
}

// Binding is a node name and the base64 public key that holds it.
type Binding struct{ Name, Key string }

// FreeNameHint says how an administrator gives a bound name to another
// machine.
func FreeNameHint(name string) string {
	return fmt.Sprintf("to give the name to another machine: kubectl delete node %s, and remove the key %s from the ConfigMap kube-system/%s", name, name, IdentitiesConfigMap)
}

// NodeClient decides a joining node's request for its kubelet client
// certificate (signer kubernetes.io/kube-apiserver-client-kubelet, made
// with a bootstrap token) against the names already bound and the nodes
// registered. On Approve of a name not yet bound, bind says which name to
// record with which public key first (zero otherwise).
func NodeClient(csr *certificatesv1.CertificateSigningRequest, nodes []corev1.Node, bound map[string]string) (Decision, Binding) {
	d, bind := nodeClient(csr, nodes, bound)
	d.Code = "KilnNodeIdentity"
	return d, bind
}

func nodeClient(csr *certificatesv1.CertificateSigningRequest, nodes []corev1.Node, bound map[string]string) (d Decision, bind Binding) {
	if csr.Spec.SignerName != certificatesv1.KubeAPIServerClientKubeletSignerName || decided(csr) ||
		!strings.HasPrefix(csr.Spec.Username, "system:bootstrap:") || !slices.Contains(csr.Spec.Groups, "system:bootstrappers") {
		// Renewals by a node's own certificate are the controller-manager's
		// (selfnodeclient): a node can renew only its own name.
		return Decision{Verdict: Skip}, Binding{}
	}
	deny := func(format string, args ...any) (Decision, Binding) {
		return Decision{Verdict: Deny, Reason: fmt.Sprintf(format, args...)}, Binding{}
	}
	req, err := nodeRequest(csr)
	if err != nil {
		return deny("%v", err)
	}
	name, ok := strings.CutPrefix(req.Subject.CommonName, nodeUserPrefix)
	if !ok || name == "" {
		return deny("subject %q is not a node (system:node:NAME)", req.Subject.CommonName)
	}
	if len(req.DNSNames)+len(req.IPAddresses)+len(req.EmailAddresses)+len(req.URIs) > 0 {
		return deny("a client certificate request carries no names")
	}
	if err := checkUsages(csr.Spec.Usages, certificatesv1.UsageClientAuth, "client"); err != nil {
		return deny("%v", err)
	}

	pub, err1 := base64.StdEncoding.DecodeString(csr.Annotations[IdentityKeyAnnotation])
	sig, err2 := base64.StdEncoding.DecodeString(csr.Annotations[IdentityProofAnnotation])
	if err1 != nil || err2 != nil || len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, csr.Spec.Request, sig) {
		return deny("node %s: no valid proof of the node's identity (annotations %s, %s): only kiln's join makes these requests", name, IdentityKeyAnnotation, IdentityProofAnnotation)
	}
	key := base64.StdEncoding.EncodeToString(pub)
	switch holder, ok := bound[name]; {
	case ok && holder == key:
		return Decision{Verdict: Approve, Reason: fmt.Sprintf("node %s rejoins with the identity it holds the name with", name)}, Binding{}
	case ok && holder == ControlPlane:
		return deny("node name %s is a master's: its credentials come from the CA, never from a join", name)
	case ok:
		return deny("node name %s is held by another machine (another identity key); %s", name, FreeNameHint(name))
	}
	for _, n := range nodes {
		if n.Name == name {
			return deny("node name %s is taken by a node that holds no kiln identity; %s", name, FreeNameHint(name))
		}
	}
	return Decision{Verdict: Approve, Reason: fmt.Sprintf("node %s joins for the first time; the name is bound to its identity", name)}, Binding{Name: name, Key: key}
}
