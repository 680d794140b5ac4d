package components

import (
	"crypto/x509"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/pki"
)

// Cert is one leaf certificate a master issues for its own components
// from a CA of the cluster it holds. Prepare issues it at every start
// (its names follow the node's config), and the node renews it while it
// runs (init/up), once pki.RenewalFraction of its lifetime has passed.
//
// Every reader kiln runs reads its file again when it changes, so a
// renewal needs no restart (README, Certificates): the API server,
// metrics-server, the controller-manager's and the scheduler's serving
// certificates and the API server's client certificates are watched
// files (k8s.io/apiserver's dynamiccertificates; the kubelet client's
// is loaded at each handshake); etcd loads its own at every handshake;
// every client-go client whose kubeconfig names its certificate file
// (clientKubeconfig) loads it at every handshake (transport's
// ReloadTLSFiles) and drops its connections within 5 minutes of a
// change; kiln's own clients (probes, the node API) load it per use.
// Restart names a component that could not, which the node restarts
// after a renewal, one at a time.
type Cert struct {
	// Name says what the certificate is ("kube-apiserver serving").
	Name string
	// Users are who read it.
	Users string
	// File is the certificate, KeyFile its key: the same file when
	// both are in one PEM (the client certificates kubeconfigs name).
	File, KeyFile string
	// Restart is the component to restart after a renewal; "" when
	// every reader picks the new file up by itself.
	Restart string

	ca    func(*cluster.Cluster) *pki.CA
	req   pki.CertRequest
	chain bool // the CA's certificate after the leaf (see APIServer.Prepare)
	// kubeconfig, when set, is a kubeconfig for req's user naming File,
	// written with the certificate at start.
	kubeconfig string
}

// CertUser is implemented by components that read certificates a master
// issues (Cert).
type CertUser interface {
	Certs(env *Env) []Cert
}

// CertValidity is the lifetime of the node's leaf certificates: the node
// config's certificates.validity.
func CertValidity(env *Env) time.Duration {
	if v := time.Duration(env.Config.Certificates.Validity); v > 0 {
		return v
	}
	return node.DefaultCertValidity
}

// CA is the CA that signs the certificate, from the node's cluster.
func (c Cert) CA(env *Env) *pki.CA { return c.ca(env.Cluster) }

// Issue writes a new certificate, signed by its CA, for
// CertValidity(env). A renewal (renew) certifies the key already in
// KeyFile when it is a file of its own, so a reader that loads the two
// files one after the other never sees a certificate with the wrong
// key; a certificate and key in one file get a new key, the file being
// replaced at once (pki.WriteFile renames).
func (c Cert) Issue(env *Env, renew bool) error {
	ca := c.CA(env)
	if ca == nil || ca.Key == nil {
		return fmt.Errorf("issuing %s: the CA's private key is not available on this node", c.File)
	}
	req := c.req
	req.Validity = CertValidity(env)
	separate := c.KeyFile != c.File
	if renew && separate {
		if data, err := pki.ReadFile(c.KeyFile); err == nil {
			if key, err := pki.ParseKeyPEM(data); err == nil {
				req.Key = key
			}
		}
	}
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return fmt.Errorf("issuing %s: %w", c.File, err)
	}
	if c.chain {
		certPEM = append(certPEM, ca.CertPEM...)
	}
	if !separate {
		if err := pki.WriteFile(c.File, append(certPEM, keyPEM...), true); err != nil {
			return err
		}
	} else {
		if req.Key == nil {
			// A new key, at a start: nothing reads the files yet.
			if err := pki.WriteFile(c.KeyFile, keyPEM, true); err != nil {
				return err
			}
		}
		if err := pki.WriteFile(c.File, certPEM, false); err != nil {
			return err
		}
	}
	if c.kubeconfig == "" || renew {
		return nil
	}
	kc := pki.Kubeconfig{
		ClusterName: env.Cluster.Name,
		Server:      env.URL(env.Config.Ports.APIServer),
		UserName:    c.req.CommonName,
		CAPEM:       env.Cluster.CA.CertPEM,
		CertFile:    c.File,
		KeyFile:     c.KeyFile,
	}
	data, err := kc.Marshal()
	if err != nil {
		return err
	}
	return pki.WriteFile(c.kubeconfig, data, true)
}

// Due reports when the certificate in File is to be renewed, and
// whether that is now. A file that is missing or does not parse is due.
// A certificate that ends with its CA is never due: a new one could not
// last longer (pki caps a certificate at its CA's end; README, The
// cluster CA).
func (c Cert) Due(env *Env, now time.Time) (renewAt time.Time, due bool) {
	cert, err := ReadCert(c.File)
	if err != nil {
		return now, true
	}
	renewAt = pki.RenewAt(cert)
	if now.Before(renewAt) {
		return renewAt, false
	}
	if ca := c.CA(env); ca != nil && !cert.NotAfter.Before(ca.Cert.NotAfter) {
		return renewAt, false
	}
	return renewAt, true
}

// ReadCert reads the first certificate of a PEM file.
func ReadCert(path string) (*x509.Certificate, error) {
	data, err := pki.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cert, err := pki.ParseCertPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cert, nil
}

// issueAll issues certs at a start.
func issueAll(env *Env, certs []Cert) error {
	for _, c := range certs {
		if err := c.Issue(env, false); err != nil {
			return err
		}
	}
	return nil
}

func clusterCA(c *cluster.Cluster) *pki.CA    { return c.CA }
func etcdCA(c *cluster.Cluster) *pki.CA       { return c.EtcdCA }
func frontProxyCA(c *cluster.Cluster) *pki.CA { return c.FrontProxyCA }
func certPair(env *Env, base string) (string, string) {
	return env.Path(base + ".crt"), env.Path(base + ".key")
}

// clientKubeconfig is a component's kubeconfig at path for user (in
// groups), and the client certificate it names: certificate and key in
// one file beside it (NAME.pem for NAME.conf), so that client-go loads
// the renewed one at its next handshake (an embedded certificate would
// be used until the component restarts).
func clientKubeconfig(env *Env, path, user string, groups []string, users string) Cert {
	pair := strings.TrimSuffix(path, filepath.Ext(path)) + ".pem"
	return Cert{
		Name: user + " client", Users: users, File: pair, KeyFile: pair,
		ca:         clusterCA,
		req:        pki.CertRequest{CommonName: user, Organization: groups, Client: true},
		kubeconfig: path,
	}
}

// loopbackServing is the serving certificate of a component that listens
// on 127.0.0.1 only (the controller-manager, the scheduler), from the
// cluster CA: upstream would make a self-signed one at every start,
// which nothing could check and nothing renews.
func loopbackServing(env *Env, name, base string) Cert {
	crt, key := certPair(env, base)
	return Cert{
		Name: name + " serving", Users: name + " (its /healthz and /metrics on loopback)", File: crt, KeyFile: key,
		ca:  clusterCA,
		req: pki.CertRequest{CommonName: name, DNSNames: []string{"localhost"}, IPs: nodeIPs(env)[:1], Server: true},
	}
}

// NodeCerts are every certificate this node issues and renews itself,
// for the components comps: each component's (CertUser), and the node
// API's serving certificate when no kubelet has it (PrepareNodeAPI).
// A worker issues none: its kubelet's certificates are the cluster's,
// signed by the masters' controller-manager and rotated by the kubelet
// (KubeletRotated).
func NodeCerts(env *Env, comps []Component) []Cert {
	var out []Cert
	for _, c := range comps {
		if u, ok := c.(CertUser); ok {
			out = append(out, u.Certs(env)...)
		}
	}
	if c, ok := nodeAPICert(env); ok {
		out = append(out, c)
	}
	return out
}

// KubeletRotated are the certificate files the kubelet of this node
// rotates itself (rotateCertificates, serverTLSBootstrap) through the
// cluster's certificate API, by name: its client certificate, and on a
// worker its serving certificate (a master issues that one: Kubelet.Certs).
// Nothing when the node runs no kubelet.
func KubeletRotated(env *Env) map[string]string {
	if !env.Config.RunsPods() {
		return nil
	}
	out := map[string]string{"kubelet client": kubeletClientPair(env)}
	if env.Config.Role == node.RoleWorker {
		out["kubelet serving"] = env.Path(kubeletDir, "pki", pki.CurrentPair("kubelet-server"))
	}
	return out
}

// kubeletClientPair is the kubelet's current client certificate and key
// (a symlink the kubelet moves when it rotates them), which the node's
// kubeconfig names.
func kubeletClientPair(env *Env) string {
	return env.Path(kubeletDir, "pki", pki.CurrentPair("kubelet-client"))
}

// seedKubeletClient gives a master's kubelet its first client certificate
// from the cluster CA, or a new one when the one it has is not this
// node's, not the CA's, or past its renewal (the node was off): after
// that the kubelet rotates it (the controller-manager approves and signs
// a node's request for its own name).
func seedKubeletClient(env *Env) error {
	user := "system:node:" + env.NodeName
	if cert, err := ReadCert(kubeletClientPair(env)); err == nil && cert.Subject.CommonName == user &&
		time.Now().Before(pki.RenewAt(cert)) && cert.CheckSignatureFrom(env.Cluster.CA.Cert) == nil {
		return nil
	}
	certPEM, keyPEM, err := env.Cluster.CA.Issue(pki.CertRequest{
		CommonName: user, Organization: []string{"system:nodes"}, Client: true, Validity: CertValidity(env),
	})
	if err != nil {
		return fmt.Errorf("issuing the kubelet's client certificate: %w", err)
	}
	_, err = pki.WriteRotatedPair(env.Path(kubeletDir, "pki"), "kubelet-client", append(certPEM, keyPEM...))
	return err
}

// writeNodeKubeconfig writes the node's kubeconfig (the kubelet's, which
// kube-proxy, the pod network and the network policies use too) naming
// the kubelet's current client certificate file, which the kubelet
// rotates and they all read again at their next handshake.
func writeNodeKubeconfig(env *Env) error {
	pair := kubeletClientPair(env)
	kc := pki.Kubeconfig{
		ClusterName: env.Cluster.Name, Server: apiEndpoint(env), UserName: "system:node:" + env.NodeName,
		CAPEM: env.Cluster.CA.CertPEM, CertFile: pair, KeyFile: pair,
	}
	data, err := kc.Marshal()
	if err != nil {
		return err
	}
	return pki.WriteFile(KubeletKubeconfig(env), data, true)
}
