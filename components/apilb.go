package components

import (
	"context"
	"net"
	"net/url"
	"strings"

	"kiln/configs/node"
)

// APILB is a worker's node-local API load balancer (components/apilb): a
// TCP proxy on 127.0.0.1:6444, TLS passed through, that the worker's join,
// kubelet, kube-proxy, pod network and network policies reach the API at
// (apiEndpoint). It spreads them over the masters' API servers that answer
// and closes the connections to one that stops answering, so a worker
// keeps working while one of several masters is down. It starts from the
// seeds of the node config (apiLBSeeds) and, once the node has joined,
// learns the masters from the cluster (the kubernetes Service's
// EndpointSlices) with the node's own credentials.
//
// A master's own components use its own API server, and a master that
// runs pods too has no balancer.
type APILB struct{}

var _ Component = APILB{}
var _ Prober = APILB{}
var _ Listener = APILB{}

// APILBPort is the balancer's port on 127.0.0.1 (the API server's is
// 6443; the API server's serving certificate holds 127.0.0.1, so the
// clients verify it as before).
const APILBPort = 6444

func (APILB) Name() string          { return node.ComponentAPILB }
func (APILB) Roles() []node.Role    { return []node.Role{node.RoleWorker} }
func (APILB) DependsOn() []string   { return nil }
func (APILB) Prepare(*Env) error    { return nil }
func (APILB) Listens(*Env) []string { return []string{hostPort(loopback, APILBPort)} }

func (APILB) Flags(env *Env) map[string]string {
	return map[string]string{
		"listen":     hostPort(loopback, APILBPort),
		"seeds":      strings.Join(apiLBSeeds(env), ","),
		"kubeconfig": KubeletKubeconfig(env),
		// The kubelet rotates its client certificate here; the
		// kubeconfig keeps the one the join got.
		"client-cert": env.Path(kubeletDir, "pki", "kubelet-client-current.pem"),
	}
}

// Ready: the balancer accepts connections. (It passes a connection on
// only once the client speaks: this probe costs the masters nothing.)
func (APILB) Ready(ctx context.Context, env *Env) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", hostPort(loopback, APILBPort))
	if err != nil {
		return err
	}
	return c.Close()
}

// apiLBURL is where a worker's components reach the API.
func apiLBURL() string { return loopbackURL(APILBPort) }

// apiLBSeeds are the API servers (HOST:PORT) the balancer starts from:
// every master of controlPlane.masters and the virtual IP
// (controlPlane.vip) at ports.apiServer; else the node's apiEndpoint;
// else the cluster's endpoint. The VIP is one seed more, not the only one:
// it is down for the seconds a takeover takes, while the masters that are
// up still answer at their own addresses.
func apiLBSeeds(env *Env) []string {
	var out []string
	for _, a := range env.Config.ControlPlane.Masters {
		out = append(out, hostPort(a, env.Config.Ports.APIServer))
	}
	if vip, ok := env.Config.VIPAddr(); ok {
		out = append(out, hostPort(vip.String(), env.Config.Ports.APIServer))
	}
	if len(out) > 0 {
		return out
	}
	if ep := env.Config.APIEndpoint; ep != "" {
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			return []string{u.Host}
		}
		return []string{trimScheme(ep)}
	}
	return []string{env.Cluster.EndpointHostPort()}
}
