package components

import "kiln/configs/node"

// VIP holds the API's virtual IP (controlPlane.vip) on one master at a
// time (components/vip): each master competes for the Lease
// kube-system/kiln-vip through its own API server, only while that API
// server is ready; the holder adds the address beside its node address
// and announces it with gratuitous ARP, and takes it off when it loses
// the Lease or stops. Runs only when a VIP is configured.
type VIP struct{}

var _ Component = VIP{}
var _ Conditional = VIP{}

const vipKubeconfig = "kubeconfig/kiln-vip.conf"

// vipUser is the holder's identity; components/addons lets it read and
// renew the Lease kube-system/kiln-vip, nothing else.
const vipUser = "kiln:vip"

// The Lease's timings. Takeover after a master dies takes LeaseDuration
// plus up to 1.2 RetryPeriods (the candidates' jittered polling): about
// 10-12 s. The holder gives the address up when it has not renewed for
// RetryPeriod+RenewDeadline (8 s), 2 s before any other master may take
// the Lease (counted from when it saw the last renewal): the margin that
// keeps two masters from answering for the VIP at once despite a slow
// clock or a renewal answered late. RenewDeadline is generous for VMs
// under TCG (about 12 times slower than native), whose API servers can
// stall for seconds under load: 7 renewal attempts, one a second, fail
// before the holder lets go, instead of the VIP flapping between masters
// (6 s/4 s/1 s would give up after 4 s). A holder that stops
// (or whose API server turns unready) gives the Lease back at once, and
// another master takes it within a RetryPeriod or two. extraArgs.vip
// changes them (lease-duration, renew-deadline, retry-period): real
// hardware can take 6 s/4 s/1 s.
const (
	vipLeaseDuration = "10s"
	vipRenewDeadline = "7s"
	vipRetryPeriod   = "1s"
)

func (VIP) Name() string                  { return node.ComponentVIP }
func (VIP) Roles() []node.Role            { return []node.Role{node.RoleMaster} }
func (VIP) DependsOn() []string           { return []string{node.ComponentAPIServer} }
func (VIP) Enabled(cfg *node.Config) bool { return cfg.ControlPlane.VIP != "" }

func (v VIP) Prepare(env *Env) error { return issueAll(env, v.Certs(env)) }

// Certs: its client certificate (client-go: at each handshake).
func (VIP) Certs(env *Env) []Cert {
	return []Cert{clientKubeconfig(env, env.Path(vipKubeconfig), vipUser, nil, "vip (client-go: at each handshake)")}
}

func (VIP) Flags(env *Env) map[string]string {
	return map[string]string{
		"vip":            env.Config.ControlPlane.VIP,
		"node-ip":        env.Config.Address,
		"identity":       env.NodeName,
		"kubeconfig":     env.Path(vipKubeconfig),
		"lease-duration": vipLeaseDuration,
		"renew-deadline": vipRenewDeadline,
		"retry-period":   vipRetryPeriod,
	}
}
