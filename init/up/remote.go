package up

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/bounded"
)

// adminGroup is the group whose client certificates may read a node's
// status and logs: the cluster-admin group of the admin kubeconfig.
const adminGroup = "system:masters"

// serveRemoteStatus serves h over TLS on addr to clients that present a
// certificate signed by the cluster CA (read from caPath at every
// handshake: a worker learns it only when it joins) for the admin group,
// or for the volumes group, which may only make and remove volumes
// (authorize).
//
// The node serves certPath and keyPath once they exist: the kubelet's
// serving certificate, which the cluster CA signed for the node's own name
// and addresses (components.NodeAPIServingFiles), read at every handshake
// since the kubelet renews it; a client that checks it against the
// cluster CA (the local-storage provisioner) knows it reached that node.
// Until then, and on a node without a kubelet, the certificate is
// self-signed, made at start: the client authenticates the node by
// nothing. Either way the node serves nothing to a client it has not
// authenticated.
func serveRemoteStatus(addr, caPath, certPath, keyPath string, h http.Handler, report func(string)) (func(), error) {
	self, err := selfSigned()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return servingCert(certPath, keyPath, &self), nil
		},
		ClientAuth: tls.RequireAnyClientCert,
		MinVersion: tls.VersionTLS12,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyClient(raw, caPath)
		},
	}
	listen := func() (net.Listener, error) {
		ln, err := tls.Listen("tcp", addr, cfg)
		if err != nil {
			return nil, fmt.Errorf("node status on %s: %w", addr, err)
		}
		return ln, nil
	}
	ln, err := listen()
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: authorize(h), ReadHeaderTimeout: 5 * time.Second}
	go serve(srv, ln, listen, "the node status server on "+addr, report)
	return func() { srv.Close() }, nil
}

// servingCert is the certificate at certPath and keyPath when both load,
// else self.
func servingCert(certPath, keyPath string, self *tls.Certificate) *tls.Certificate {
	if certPath == "" {
		return self
	}
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return self
	}
	return &c
}

// verifyClient checks a client chain against the cluster CA, and that
// the client is in the admin group or the volumes group.
func verifyClient(raw [][]byte, caPath string) error {
	data, err := bounded.ReadFile(caPath, bounded.MaxKeyFile)
	if err != nil {
		return errors.New("this node does not know the cluster CA yet (it has not joined)")
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(data) {
		return fmt.Errorf("%s holds no certificate", caPath)
	}
	if len(raw) == 0 {
		return errors.New("no client certificate")
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, r := range raw[1:] {
		if c, err := x509.ParseCertificate(r); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	if !slices.Contains(leaf.Subject.Organization, adminGroup) && !slices.Contains(leaf.Subject.Organization, nodeapi.VolumesGroup) {
		return fmt.Errorf("client %q is in neither %s nor %s", leaf.Subject.CommonName, adminGroup, nodeapi.VolumesGroup)
	}
	return nil
}

// authorize lets the admin group use the whole node API, and the volumes
// group (the masters' local-storage provisioner) make and remove volumes
// and nothing else: least privilege for a certificate every master holds.
// The handshake (verifyClient) has checked the chain.
func authorize(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "no client certificate", http.StatusForbidden)
			return
		}
		leaf := r.TLS.PeerCertificates[0]
		groups := leaf.Subject.Organization
		switch {
		case slices.Contains(groups, adminGroup):
		case slices.Contains(groups, nodeapi.VolumesGroup) && volumeRequest(r):
		default:
			http.Error(w, fmt.Sprintf("client %q may not %s %s on this node (its group %s may only PUT and DELETE %sNAME)",
				leaf.Subject.CommonName, r.Method, r.URL.Path, nodeapi.VolumesGroup, nodeapi.PathVolumes), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// volumeRequest is PUT or DELETE /volumes/NAME, NAME one path segment
// (withVolumes checks it further).
func volumeRequest(r *http.Request) bool {
	if r.Method != http.MethodPut && r.Method != http.MethodDelete {
		return false
	}
	name, ok := strings.CutPrefix(r.URL.Path, nodeapi.PathVolumes)
	return ok && name != "" && !strings.Contains(name, "/")
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "kiln-node " + host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
