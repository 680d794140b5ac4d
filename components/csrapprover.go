package components

import "kiln/configs/node"

// CSRApprover is a master's approver of kubelet serving certificates: a
// worker's kubelet asks the cluster CA for the certificate of its API
// (logs, exec, metrics), the API server verifies that certificate, and
// kiln approves a request only when its names and addresses are the asking
// node's own (components/approve). Its user may do nothing else.
type CSRApprover struct{}

var _ Component = CSRApprover{}

const csrApproverKubeconfig = "kubeconfig/kiln-csr-approver.conf"

// csrApproverUser is the approver's identity; components/addons grants it
// its rights (kiln:csr-approver).
const csrApproverUser = "kiln:csr-approver"

func (CSRApprover) Name() string             { return node.ComponentCSRApprover }
func (CSRApprover) Roles() []node.Role       { return []node.Role{node.RoleMaster} }
func (CSRApprover) DependsOn() []string      { return []string{node.ComponentAPIServer} }
func (c CSRApprover) Prepare(env *Env) error { return issueAll(env, c.Certs(env)) }

// Certs: its client certificate (client-go: at each handshake).
func (CSRApprover) Certs(env *Env) []Cert {
	return []Cert{clientKubeconfig(env, env.Path(csrApproverKubeconfig), csrApproverUser, nil, "csr-approver (client-go: at each handshake)")}
}

func (CSRApprover) Flags(env *Env) map[string]string {
	return map[string]string{"kubeconfig": env.Path(csrApproverKubeconfig)}
}
