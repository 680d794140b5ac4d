package components

import "kiln/configs/node"

// PrepareNodeAPI issues a master's node API serving certificate when no
// kubelet does: a master that runs no pods has no kubelet, and its node
// API would otherwise serve a self-signed certificate that kiln cannot
// verify. It is the certificate a master's kubelet has
// (NodeAPIServingFiles), re-issued at every start the same way.
func PrepareNodeAPI(env *Env) error {
	if env.Config.Role != node.RoleMaster || env.Config.RunsPods() {
		return nil
	}
	c, _ := nodeAPICert(env)
	return c.Issue(env, false)
}

// nodeAPICert is the node API's serving certificate on a master without
// a kubelet (ok false elsewhere: the kubelet's is the node API's).
func nodeAPICert(env *Env) (Cert, bool) {
	if env.Config.Role != node.RoleMaster || env.Config.RunsPods() {
		return Cert{}, false
	}
	c := kubeletServing(env)
	c.Name, c.Users = "node API serving", "the node API (at each handshake)"
	return c, true
}

// NodeAPIClientFiles are the certificate and key a master's node API
// relays with (nodeapi.PathRelay) to another node's: the API server's
// kubelet client certificate, of the admin group (system:masters). ok is
// false on a worker, which holds no such certificate and relays nothing.
func NodeAPIClientFiles(env *Env) (cert, key string, ok bool) {
	if env.Config.Role != node.RoleMaster {
		return "", "", false
	}
	return env.Path(apiKubeletClientCert), env.Path(apiKubeletClientKey), true
}
