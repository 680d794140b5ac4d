package localstorage

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"

	"kiln/configs/nodeapi"
	"kiln/internal/nodeclient"
)

// NodeAPI reaches the nodes' API (nodeapi.Port) as the provisioner: a
// client certificate of the group nodeapi.VolumesGroup, and each node's
// serving certificate verified against the cluster CA for the node's
// InternalIP and name (nodeclient.VerifyNodeAt: the node API serves the
// kubelet's serving certificate, which the cluster CA signed for the
// node's own name and addresses).
type NodeAPI struct {
	client *nodeclient.Client
	port   int
	// Timeout bounds one request (0: 30 s).
	Timeout time.Duration
}

// NewNodeAPI makes a client from the cluster CA (PEM) and the
// provisioner's client certificate and key files, read again at each
// handshake (the node renews them in place), for the node API on port.
func NewNodeAPI(caPEM []byte, certFile, keyFile string, port int) (*NodeAPI, error) {
	c, err := nodeclient.FromCertFiles(certFile, keyFile, caPEM)
	if err != nil {
		return nil, err
	}
	return &NodeAPI{client: c, port: port}, nil
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
	// The certificate must be the node's own, issued for the address:
	// not another node's that once had the address.
	t := nodeclient.Target{Addr: net.JoinHostPort(ip, strconv.Itoa(c.port)), Name: ip, Node: n.Name}
	_, err = c.client.Call(ctx, t, method, nodeapi.PathVolumes+name, nil, 64<<10)
	var answer *nodeclient.StatusError
	var unknown x509.UnknownAuthorityError
	switch {
	case errors.As(err, &answer):
		return &StatusError{Node: n.Name, Code: answer.Code, Status: answer.Status, Message: answer.Message}
	case errors.As(err, &unknown):
		return fmt.Errorf("%w (its API serves a certificate of the cluster CA once its kubelet has its serving certificate)", err)
	}
	return err
}
