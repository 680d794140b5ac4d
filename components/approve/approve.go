// Package approve decides which kubelet serving-certificate requests kiln
// approves. A worker's kubelet asks the cluster CA for the certificate it
// serves its API with (logs, exec, port-forward, metrics), and the API
// server verifies it (--kubelet-certificate-authority). The upstream
// controller-manager never approves these requests (anyone holding a node
// credential could claim another node's addresses); kiln approves one only
// when every name and address in it belongs to the node asking.
//
// The decision is a pure function of the request and the Node objects, so
// it is tested without a cluster; components/entry runs it in a loop.
package approve

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
)

// Verdict is what to do with a request.
type Verdict int

const (
	// Skip: not a request kiln decides (another signer, already decided).
	Skip Verdict = iota
	// Wait: not decidable yet (the node has not registered its addresses).
	Wait
	Approve
	Deny
)

// Decision is a verdict with the reason, for the CSR's condition and the
// component's log.
type Decision struct {
	Verdict Verdict
	Reason  string
	// Code is the CSR condition's machine-readable reason
	// (KilnNodeServingCert, KilnNodeIdentity; "Mismatch" appended on Deny).
	Code string
}

const nodeUserPrefix = "system:node:"

// KubeletServing decides a request for signer kubernetes.io/kubelet-serving
// against the cluster's nodes.
func KubeletServing(csr *certificatesv1.CertificateSigningRequest, nodes []corev1.Node) Decision {
	d := kubeletServing(csr, nodes)
	d.Code = "KilnNodeServingCert"
	return d
}

func kubeletServing(csr *certificatesv1.CertificateSigningRequest, nodes []corev1.Node) Decision {
	if csr.Spec.SignerName != certificatesv1.KubeletServingSignerName || decided(csr) {
		return Decision{Verdict: Skip}
	}
	deny := func(format string, args ...any) Decision {
		return Decision{Verdict: Deny, Reason: fmt.Sprintf(format, args...)}
	}
	name, ok := strings.CutPrefix(csr.Spec.Username, nodeUserPrefix)
	if !ok || name == "" || !slices.Contains(csr.Spec.Groups, "system:nodes") {
		return deny("requested by %q, not by a node (system:node:NAME in group system:nodes)", csr.Spec.Username)
	}
	req, err := nodeRequest(csr)
	if err != nil {
		return deny("%v", err)
	}
	if req.Subject.CommonName != csr.Spec.Username {
		return deny("subject %q is not the requesting node %q", req.Subject.CommonName, csr.Spec.Username)
	}
	if len(req.EmailAddresses) > 0 || len(req.URIs) > 0 {
		return deny("e-mail or URI names are never approved")
	}
	if len(req.DNSNames) == 0 && len(req.IPAddresses) == 0 {
		return deny("no DNS name or IP address to serve")
	}
	if err := checkUsages(csr.Spec.Usages, certificatesv1.UsageServerAuth, "serving"); err != nil {
		return deny("%v", err)
	}

	var self *corev1.Node
	for i := range nodes {
		if nodes[i].Name == name {
			self = &nodes[i]
		}
	}
	if self == nil || len(self.Status.Addresses) == 0 {
		return Decision{Verdict: Wait, Reason: "node " + name + " has not registered its addresses yet"}
	}
	hostnames := map[string]bool{name: true}
	ips := map[string]bool{}
	for _, a := range self.Status.Addresses {
		switch a.Type {
		case corev1.NodeHostName, corev1.NodeInternalDNS, corev1.NodeExternalDNS:
			hostnames[a.Address] = true
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if ip := net.ParseIP(a.Address); ip != nil {
				ips[ip.String()] = true
			}
		}
	}
	for _, d := range req.DNSNames {
		if !hostnames[d] {
			return deny("DNS name %q is not one of node %s's", d, name)
		}
	}
	for _, ip := range req.IPAddresses {
		if !ips[ip.String()] {
			return deny("IP address %s is not one of node %s's", ip, name)
		}
		// Two nodes claiming one address: one of them lies, and a
		// certificate would let it answer for the other.
		for _, n := range nodes {
			if n.Name == name {
				continue
			}
			for _, a := range n.Status.Addresses {
				if (a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP) && net.ParseIP(a.Address).Equal(ip) {
					return deny("IP address %s is also node %s's", ip, n.Name)
				}
			}
		}
	}
	return Decision{Verdict: Approve, Reason: fmt.Sprintf("node %s's own names %v and addresses %v", name, req.DNSNames, req.IPAddresses)}
}

// nodeRequest parses a CSR's request: a PEM certificate request, signed
// by its own key, for the organization system:nodes.
func nodeRequest(csr *certificatesv1.CertificateSigningRequest) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode(csr.Spec.Request)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("the request is not a PEM certificate request")
	}
	req, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("the request does not parse: %v", err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("the request's signature is wrong: %v", err)
	}
	if !slices.Equal(req.Subject.Organization, []string{"system:nodes"}) {
		return nil, fmt.Errorf("organization %q, want [system:nodes]", req.Subject.Organization)
	}
	return req, nil
}

// checkUsages accepts usages that include need (server or client auth)
// and otherwise only digital signature and key encipherment; kind names
// the certificate in the error ("serving", "client").
func checkUsages(usages []certificatesv1.KeyUsage, need certificatesv1.KeyUsage, kind string) error {
	for _, u := range usages {
		switch u {
		case need, certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment:
		default:
			return fmt.Errorf("usage %q is not a %s certificate's", u, kind)
		}
	}
	if !slices.Contains(usages, need) {
		return fmt.Errorf("no %s usage", need)
	}
	return nil
}

// decided reports whether the request is already approved, denied or failed.
func decided(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		switch c.Type {
		case certificatesv1.CertificateApproved, certificatesv1.CertificateDenied, certificatesv1.CertificateFailed:
			return true
		}
	}
	return false
}

// Condition is the status condition that records a decision.
func Condition(d Decision) certificatesv1.CertificateSigningRequestCondition {
	c := certificatesv1.CertificateSigningRequestCondition{Status: corev1.ConditionTrue, Message: d.Reason}
	if d.Verdict == Approve {
		c.Type, c.Reason = certificatesv1.CertificateApproved, d.Code
	} else {
		c.Type, c.Reason = certificatesv1.CertificateDenied, d.Code+"Mismatch"
	}
	return c
}
