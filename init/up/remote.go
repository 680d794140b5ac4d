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
	"time"

	"kiln/internal/bounded"
)

// adminGroup is the group whose client certificates may read a node's
// status and logs: the cluster-admin group of the admin kubeconfig.
const adminGroup = "system:masters"

// serveRemoteStatus serves h over TLS on addr to clients that present a
// certificate signed by the cluster CA (read from caPath at every
// handshake: a worker learns it only when it joins) for the admin group.
// The node's own certificate is self-signed, made at start: the client
// authenticates the node by nothing, but the node serves nothing to a
// client it has not authenticated.
func serveRemoteStatus(addr, caPath string, h http.Handler, report func(string)) (func(), error) {
	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		MinVersion:   tls.VersionTLS12,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyAdmin(raw, caPath)
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
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go serve(srv, ln, listen, "the node status server on "+addr, report)
	return func() { srv.Close() }, nil
}

// verifyAdmin checks a client chain against the cluster CA and the admin
// group.
func verifyAdmin(raw [][]byte, caPath string) error {
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
	if !slices.Contains(leaf.Subject.Organization, adminGroup) {
		return fmt.Errorf("client %q is not in %s", leaf.Subject.CommonName, adminGroup)
	}
	return nil
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
