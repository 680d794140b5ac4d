// Package nodeclient is the one client of the node API (port 10260,
// configs/nodeapi): kiln's commands, the kiln cluster endpoint's VIP
// probe, a master relaying to another node, the local-storage
// provisioner (components/localstorage) and the VM tests all use it.
//
// Both ends are authenticated. The client presents a certificate of the
// cluster CA (the admin kubeconfig's, of group system:masters; the
// provisioner's, of group nodeapi.VolumesGroup), and it checks the node's
// serving certificate against the cluster CA: the kubelet's serving
// certificate, which the CA signed for the node's name and addresses
// (CN system:node:NAME). A node that still serves a self-signed
// certificate (a worker whose kubelet has no serving certificate yet) or
// another cluster's is refused with an error that says so.
package nodeclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"kiln/configs/cluster"
	"kiln/configs/nodeapi"
	"kiln/pki"
)

// Target is a node to reach.
type Target struct {
	// Addr is HOST:PORT to dial: the node's address and nodeapi.Port,
	// or a forward of it (127.0.0.1:PORT).
	Addr string
	// Name is what the node's serving certificate must be issued for:
	// the node's name, or the IP address dialled. "" accepts any node
	// certificate of the cluster CA (CN system:node:NAME): for a forward
	// on loopback, whose address is no node's.
	Name string
	// Node, when set, is the node whose certificate it must be as well
	// (CN system:node:NODE): for a node reached at its address (Name the
	// IP address), which another node may have had before. It is checked
	// on the connection this client dials, so not with Via.
	Node string
	// Via, when set, is a master that relays the request to this node
	// (nodeapi.RelayPath): for a node the client has no route to, such
	// as a kiln cluster's worker, whose node API has no forward. Addr is
	// then the node's address as the master reaches it.
	Via *Target
}

// String names the target in errors.
func (t Target) String() string {
	s := t.Addr
	name := t.Name
	if t.Node != "" {
		name = t.Node
	}
	if name != "" && name != hostOf(t.Addr) {
		s = name + " (" + t.Addr + ")"
	}
	if t.Via != nil {
		s += " via " + t.Via.String()
	}
	return s
}

// Client sends requests to node APIs.
type Client struct {
	cert tls.Certificate
	// certFile and keyFile, when set, are where cert came from, read
	// again at each handshake (FromCertFiles).
	certFile, keyFile string
	roots             *x509.CertPool
	// DialTimeout bounds the connection and the TLS handshake; the
	// request itself is bounded by its context only (a followed log
	// streams for as long as the caller wants).
	DialTimeout time.Duration

	mu         sync.Mutex
	transports map[peer]*http.Transport // by what the certificate must be
}

// peer is what a node's certificate must be: issued for name (any
// node's when ""), and node's own when node is set (Target.Node).
type peer struct{ name, node string }

// New is a client that presents cert and trusts the nodes the CA in
// caPEM signed.
func New(cert tls.Certificate, caPEM []byte) (*Client, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no CA certificate to check the nodes against")
	}
	return &Client{cert: cert, roots: roots, DialTimeout: 10 * time.Second, transports: map[peer]*http.Transport{}}, nil
}

// FromPEM is a client with a certificate and key and the cluster CA, all
// PEM: the local-storage provisioner's, from its kubeconfig's data.
func FromPEM(caPEM, certPEM, keyPEM []byte) (*Client, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return New(cert, caPEM)
}

// FromCertFiles is a client with the certificate and key in certFile
// and keyFile and the cluster CA in caPEM, for a client that lives long
// (the local-storage provisioner): it reads the files again at each
// handshake, so a certificate the node renews in place is used at once;
// the one read now stands in if a read fails.
func FromCertFiles(certFile, keyFile string, caPEM []byte) (*Client, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	c, err := New(cert, caPEM)
	if err != nil {
		return nil, err
	}
	c.certFile, c.keyFile = certFile, keyFile
	return c, nil
}

// FromKubeconfig is a client with a kiln kubeconfig's client certificate
// and CA (the admin kubeconfig: group system:masters, the cluster CA).
func FromKubeconfig(path string) (*Client, error) {
	data, err := pki.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cert, err := kc.ClientCertificate()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c, err := New(cert, kc.CAPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// FromClusterDir is FromKubeconfig of the cluster directory's
// admin.kubeconfig.
func FromClusterDir(dir string) (*Client, error) {
	c, err := FromKubeconfig(filepath.Join(dir, cluster.AdminKubeconfigFile))
	if err != nil {
		return nil, fmt.Errorf("admin credentials: %w (give the cluster directory with --cluster)", err)
	}
	return c, nil
}

// FromFiles is a client with a certificate and key file and a CA file:
// a master relaying with its own admin-group certificate.
func FromFiles(certPath, keyPath, caPath string) (*Client, error) {
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	ca, err := pki.ReadFile(caPath)
	if err != nil {
		return nil, err
	}
	c, err := New(cert, ca)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", caPath, err)
	}
	return c, nil
}

// ErrNotVerified is in the error of a request to a node whose serving
// certificate the cluster CA did not sign for the expected name.
var ErrNotVerified = errors.New("the node's certificate is not verified")

// Do sends a request to t's node API. path may carry a query
// ("/logs/etcd?tail=10"). The caller reads and closes the body, whatever
// the status.
func (c *Client) Do(ctx context.Context, t Target, method, path string, body io.Reader, header http.Header) (*http.Response, error) {
	dial := t
	if t.Via != nil {
		if t.Node != "" {
			return nil, fmt.Errorf("node %s: a relayed request's certificate is the relaying master's to check, by the node's name (Target.Node is for a direct connection)", t)
		}
		dial = *t.Via
		var err error
		if path, err = RelayPath(t.Name, hostOf(t.Addr), path); err != nil {
			return nil, err
		}
	}
	p, q, _ := strings.Cut(path, "?")
	// url.URL escapes what a host may hold that a URL may not (an IPv6
	// zone's '%').
	u := &url.URL{Scheme: "https", Host: dial.Addr, Path: p, RawQuery: q}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", t, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.transport(peer{dial.Name, dial.Node}).RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", t, err)
	}
	return resp, nil
}

// Get is Do of a GET that wants 200 OK, read whole up to limit bytes; any
// other answer is the error, with the node's words.
func (c *Client) Get(ctx context.Context, t Target, path string, limit int64) ([]byte, error) {
	return c.Call(ctx, t, http.MethodGet, path, nil, limit)
}

// Call is Do of a request whose answer is read whole (ReadAnswer): its
// body, up to limit bytes, when the node did it (2xx); else a
// *StatusError with the status code and the node's words.
func (c *Client) Call(ctx context.Context, t Target, method, path string, body io.Reader, limit int64) ([]byte, error) {
	resp, err := c.Do(ctx, t, method, path, body, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return ReadAnswer(t, resp, limit)
}

// ReadAnswer reads an answer up to limit bytes: its body when 200 OK (or
// another 2xx), else an error with the status and the node's words.
func ReadAnswer(t Target, resp *http.Response, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("node %s: reading the answer: %w", t, err)
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 2048 {
			msg = msg[:2048] + "…"
		}
		return nil, &StatusError{Target: t, Code: resp.StatusCode, Status: resp.Status, Message: msg}
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("node %s: the answer is larger than %d bytes (not read further)", t, limit)
	}
	return data, nil
}

// StatusError is a node's answer other than 2xx.
type StatusError struct {
	Target  Target
	Code    int
	Status  string
	Message string
}

func (e *StatusError) Error() string {
	hint := ""
	if e.Code == http.StatusForbidden {
		hint = " (the node API serves the cluster's admins: is this the admin kubeconfig's cluster directory?)"
	}
	return fmt.Sprintf("node %s: %s: %s%s", e.Target, e.Status, e.Message, hint)
}

// transport is the keep-alive transport for nodes whose certificate must
// be p's: a connection is kept for the same expectation only.
func (c *Client) transport(p peer) *http.Transport {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.transports[p]; ok {
		return t
	}
	d := &net.Dialer{Timeout: c.DialTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		DialContext:         d.DialContext,
		TLSHandshakeTimeout: c.DialTimeout,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
		TLSClientConfig:     c.tlsConfig(p),
	}
	c.transports[p] = t
	return t
}

// CloseIdle closes the kept-alive connections.
func (c *Client) CloseIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.transports {
		t.CloseIdleConnections()
	}
}

// TLSConfig is the client's TLS configuration for a node whose serving
// certificate the cluster CA must have issued for name (any node's, when
// name is "": see Target.Name).
func (c *Client) TLSConfig(name string) *tls.Config {
	return c.tlsConfig(peer{name: name})
}

// tlsConfig is the TLS configuration for a node whose certificate must
// be p's.
func (c *Client) tlsConfig(p peer) *tls.Config {
	return &tls.Config{
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c.certFile != "" {
				if cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile); err == nil {
					return &cert, nil
				}
			}
			return &c.cert, nil
		},
		MinVersion: tls.VersionTLS12,
		// The check is VerifyConnection's: Go's own would check the
		// certificate against the address dialled, which a forward's
		// (127.0.0.1) is not.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verify(cs.PeerCertificates, c.roots, p)
		},
	}
}

// VerifyNode checks a node's certificate chain: signed by roots, for
// server authentication, and issued for name (a DNS name or an IP
// address), or, when name is "", a node's certificate (CN
// system:node:NAME).
func VerifyNode(chain []*x509.Certificate, roots *x509.CertPool, name string) error {
	return verify(chain, roots, peer{name: name})
}

// VerifyNodeAt checks the certificate chain of node at addr (an IP
// address or a DNS name): signed by roots, for server authentication,
// the node's own (CN system:node:NODE) and issued for addr, so neither
// another node that has the address now nor the node's certificate
// served from another address.
func VerifyNodeAt(chain []*x509.Certificate, roots *x509.CertPool, node, addr string) error {
	if node == "" || addr == "" {
		return fmt.Errorf("%w: no node name or address to check it against", ErrNotVerified)
	}
	return verify(chain, roots, peer{name: addr, node: node})
}

// verify checks a node's certificate chain against p: VerifyNode of
// p.name, and, when p.node is set, the certificate of that node.
func verify(chain []*x509.Certificate, roots *x509.CertPool, p peer) error {
	name := p.name
	if len(chain) == 0 {
		return fmt.Errorf("%w: the node sent none", ErrNotVerified)
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	// The x509 error is wrapped too, for callers that tell a certificate
	// of another CA from the rest (x509.UnknownAuthorityError).
	var unknown x509.UnknownAuthorityError
	switch {
	case errors.As(err, &unknown) && leaf.Issuer.String() == leaf.Subject.String():
		return causedBy{fmt.Errorf("%w: it is self-signed (%q), not the cluster CA's: the node has no serving certificate yet (a worker gets one once its kubelet has joined and its request is approved; a node image older than this kiln has none on masters without pods)", ErrNotVerified, leaf.Subject.CommonName), unknown}
	case errors.As(err, &unknown):
		return causedBy{fmt.Errorf("%w: %q is signed by %q, not this cluster's CA: another cluster's node, or the wrong --cluster", ErrNotVerified, leaf.Subject.CommonName, leaf.Issuer.CommonName), unknown}
	case err != nil:
		return fmt.Errorf("%w: %v", ErrNotVerified, err)
	}
	if name != "" {
		if err := leaf.VerifyHostname(name); err != nil {
			return fmt.Errorf("%w: issued for %s, not %s: another node answers there", ErrNotVerified, issuedFor(leaf), name)
		}
	}
	switch cn := leaf.Subject.CommonName; {
	case p.node != "" && cn != "system:node:"+p.node:
		at := ""
		if name != "" {
			at = " at " + name
		}
		return fmt.Errorf("%w: the node API%s serves the certificate of %q, not of node %s", ErrNotVerified, at, cn, p.node)
	case name == "" && !strings.HasPrefix(cn, "system:node:"):
		return fmt.Errorf("%w: %q is not a node's certificate (want CN system:node:NAME)", ErrNotVerified, cn)
	}
	return nil
}

// causedBy is err, in its words, that also wraps cause.
type causedBy struct{ err, cause error }

func (e causedBy) Error() string   { return e.err.Error() }
func (e causedBy) Unwrap() []error { return []error{e.err, e.cause} }

// issuedFor lists a certificate's names.
func issuedFor(c *x509.Certificate) string {
	names := append([]string{}, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "no name"
	}
	return strings.Join(names, ", ")
}

// RelayPath is the path on a master that relays path to the node name
// at addr (an IP address): nodeapi.PathRelay NAME/ADDR PATH.
func RelayPath(name, addr, path string) (string, error) {
	if name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("relay: %q is not a node name", name)
	}
	if net.ParseIP(addr) == nil {
		return "", fmt.Errorf("relay to %s: %q is not an IP address", name, addr)
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return nodeapi.PathRelay + name + "/" + addr + path, nil
}

// hostOf is the host of HOST:PORT (the whole when it has no port).
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
