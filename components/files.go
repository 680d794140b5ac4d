package components

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"kiln/pki"
)

// issue writes a certificate and key signed by ca to dir/base.crt and
// dir/base.key. Leaf certificates are re-issued at every start, so their
// names and addresses always match the node's current config.
func issue(ca *pki.CA, certPath, keyPath string, req pki.CertRequest) error {
	if ca == nil || ca.Key == nil {
		return fmt.Errorf("issuing %s: the CA's private key is not available on this node", certPath)
	}
	if req.Validity == 0 {
		req.Validity = 365 * 24 * time.Hour
	}
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return fmt.Errorf("issuing %s: %w", certPath, err)
	}
	if err := pki.WriteFile(certPath, certPEM, false); err != nil {
		return err
	}
	return pki.WriteFile(keyPath, keyPEM, true)
}

// writeKubeconfig writes a kubeconfig with a client certificate for user.
func writeKubeconfig(env *Env, path, user string, groups []string) error {
	ca := env.Cluster.CA
	certPEM, keyPEM, err := ca.Issue(pki.CertRequest{
		CommonName:   user,
		Organization: groups,
		Client:       true,
		Validity:     365 * 24 * time.Hour,
	})
	if err != nil {
		return fmt.Errorf("issuing client certificate for %s: %w", user, err)
	}
	kc := pki.Kubeconfig{
		ClusterName: env.Cluster.Name,
		Server:      env.URL(env.Config.Ports.APIServer),
		UserName:    user,
		CAPEM:       ca.CertPEM,
		CertPEM:     certPEM,
		KeyPEM:      keyPEM,
	}
	data, err := kc.Marshal()
	if err != nil {
		return err
	}
	return pki.WriteFile(path, data, true)
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// nodeIPs are the addresses a serving certificate of this node must carry.
func nodeIPs(env *Env) []net.IP {
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	if ip := net.ParseIP(env.Config.Address); ip != nil && !ip.Equal(ips[0]) {
		ips = append(ips, ip)
	}
	return ips
}
