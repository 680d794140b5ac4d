package localstorage

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
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"kiln/configs/nodeapi"
)

// NodeAPI reaches the nodes' API (nodeapi.Port) as the provisioner: a
// client certificate of the group nodeapi.VolumesGroup, and each node's
// serving certificate verified against the cluster CA for the node's
// InternalIP and name (the node API serves the kubelet's serving
// certificate, which the cluster CA signed for the node's own name and
// addresses).
type NodeAPI struct {
	roots *x509.CertPool
	cert  tls.Certificate
	port  int
	// Timeout bounds one request (0: 30 s).
	Timeout time.Duration
}

// NewNodeAPI makes a client from the cluster CA and the provisioner's
// client certificate and key (PEM), for the node API on port.
func NewNodeAPI(caPEM, certPEM, keyPEM []byte, port int) (*NodeAPI, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no cluster CA certificate")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return &NodeAPI{roots: roots, cert: cert, port: port}, nil
}

// MakeVolume asks node n to make its volume directory name: PUT
// /volumes/NAME on its InternalIP. A node without a state disk answers
// 409 Conflict (a *StatusError), and why.
func (c *NodeAPI) MakeVolume(ctx context.Context, n *corev1.Node, name string) error {
	return c.volume(ctx, http.MethodPut, n, name)
}

// RemoveVolume asks node n to remove its volume directory name: DELETE
// /volumes/NAME on its InternalIP.
func (c *NodeAPI) RemoveVolume(ctx context.Context, n *corev1.Node, name string) error {
	return c.volume(ctx, http.MethodDelete, n, name)
}

// StatusError is a node's answer other than a success (2xx).
type StatusError struct {
	Node string
	// Code is the answer's status code, Status its status line.
	Code   int
	Status string
	// Message is the answer's text: what the node says went wrong.
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("node %s's API: %s: %s", e.Node, e.Status, e.Message)
}

// volume sends method /volumes/NAME to node n's API.
func (c *NodeAPI) volume(ctx context.Context, method string, n *corev1.Node, name string) error {
	if err := nodeapi.CheckVolumeName(name); err != nil {
		return err
	}
	ip, err := InternalIP(n)
	if err != nil {
		return err
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nodeName := n.Name
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs:      c.roots,
			Certificates: []tls.Certificate{c.cert},
			MinVersion:   tls.VersionTLS12,
			// The chain and the address are checked by crypto/tls (the
			// URL's host is the InternalIP); this checks the certificate
			// is the node's own, not another node's that once had the
			// address.
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("no server certificate")
				}
				if cn := cs.PeerCertificates[0].Subject.CommonName; cn != "system:node:"+nodeName {
					return fmt.Errorf("the node API at %s serves the certificate of %q, not of node %s", ip, cn, nodeName)
				}
				return nil
			},
		},
		DisableKeepAlives: true,
	}}
	u := &url.URL{Scheme: "https", Host: net.JoinHostPort(ip, strconv.Itoa(c.port)), Path: nodeapi.PathVolumes + name}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		var unknown x509.UnknownAuthorityError
		if errors.As(err, &unknown) {
			return fmt.Errorf("node %s's API at %s: %w (its API serves a certificate of the cluster CA once its kubelet has its serving certificate)", nodeName, u.Host, err)
		}
		return fmt.Errorf("node %s's API at %s: %w", nodeName, u.Host, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return &StatusError{Node: nodeName, Code: resp.StatusCode, Status: resp.Status, Message: strings.TrimSpace(string(body))}
	}
	return nil
}
