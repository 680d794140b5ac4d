package components

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	"kiln/configs/node"
	"kiln/pki"
)

// APIServer is upstream kube-apiserver: TLS only, RBAC and Node
// authorization, NodeRestriction, anonymous access only to the health
// endpoints, Secrets encrypted at rest, bootstrap tokens for joining nodes.
type APIServer struct{}

var _ Component = APIServer{}
var _ Prober = APIServer{}
var _ Listener = APIServer{}

func (APIServer) Name() string        { return node.ComponentAPIServer }
func (APIServer) Roles() []node.Role  { return []node.Role{node.RoleMaster} }
func (APIServer) DependsOn() []string { return []string{node.ComponentEtcd} }
func (APIServer) Listens(env *Env) []string {
	return []string{hostPort(apiBindAddress(env), env.Config.Ports.APIServer)}
}

// apiBindAddress is where the API server listens: the node's address;
// every address with a virtual IP (controlPlane.vip), which comes and goes
// with the Lease (components/vip) while the API server runs, and which the
// API server could not bind before it is there. (kubeadm binds every
// address by default; port 6443 is open on every address anyway, the
// firewall leaves it so.)
func apiBindAddress(env *Env) string {
	if env.Config.ControlPlane.VIP != "" {
		return "0.0.0.0"
	}
	return env.Config.Address
}

const (
	apiCACert            = "pki/ca.crt"
	apiServingCert       = "pki/apiserver.crt"
	apiServingKey        = "pki/apiserver.key"
	apiKubeletClientCert = "pki/apiserver-kubelet-client.crt"
	apiKubeletClientKey  = "pki/apiserver-kubelet-client.key"
	frontProxyCACert     = "pki/front-proxy-ca.crt"
	frontProxyClientCert = "pki/front-proxy-client.crt"
	frontProxyClientKey  = "pki/front-proxy-client.key"
	apiEncryptionConfig  = "config/encryption-config.yaml"
	apiAuthnConfig       = "config/authentication-config.yaml"
	apiAdmissionConfig   = "config/admission-config.yaml"
	apiAuditPolicy       = "config/audit-policy.yaml"
	serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
)

func (APIServer) Prepare(env *Env) error {
	c := env.Cluster
	if err := pki.WriteFile(env.Path(apiCACert), c.CA.CertPEM, false); err != nil {
		return err
	}
	if err := pki.WriteFile(env.Path(frontProxyCACert), c.FrontProxyCA.CertPEM, false); err != nil {
		return err
	}
	if _, _, err := apiServerSANs(env); err != nil {
		return err
	}
	if err := issueAll(env, APIServer{}.Certs(env)); err != nil {
		return err
	}
	// secretbox (XSalsa20-Poly1305) is the at-rest provider upstream
	// recommends over aescbc; identity stays last so data written before
	// encryption was on can still be read.
	enc := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - secretbox:
      keys:
      - name: kiln-1
        secret: %s
  - identity: {}
`, base64.StdEncoding.EncodeToString(c.EncryptionKey))
	if err := pki.WriteFile(env.Path(apiEncryptionConfig), []byte(enc), true); err != nil {
		return err
	}
	// Anonymous requests are refused everywhere but the health endpoints,
	// which the supervisor and load balancers probe without credentials.
	authn := `apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
anonymous:
  enabled: true
  conditions:
  - path: /livez
  - path: /readyz
  - path: /healthz
`
	if err := pki.WriteFile(env.Path(apiAuthnConfig), []byte(authn), false); err != nil {
		return err
	}
	if err := pki.WriteFile(env.Path(apiAdmissionConfig), []byte(admissionConfig(env.Config.PodSecurity)), false); err != nil {
		return err
	}
	if err := mkdirs(filepath.Dir(AuditLog(env))); err != nil {
		return err
	}
	return pki.WriteFile(env.Path(apiAuditPolicy), []byte(auditPolicy), false)
}

// Certs: the API server's serving certificate, and its client
// certificates to the kubelets and to aggregated APIs (front proxy). It
// watches all three files (k8s.io/apiserver's dynamiccertificates:
// --tls-cert-file, --proxy-client-cert-file) or loads them at each
// handshake (--kubelet-client-certificate: client-go's ReloadTLSFiles).
func (APIServer) Certs(env *Env) []Cert {
	// Prepare has checked the cluster's service range.
	dns, ips, _ := apiServerSANs(env)
	return []Cert{
		{
			Name: "kube-apiserver serving", Users: "kube-apiserver (watches it); every client of the API",
			File: env.Path(apiServingCert), KeyFile: env.Path(apiServingKey),
			ca: clusterCA, req: pki.CertRequest{CommonName: "kube-apiserver", DNSNames: dns, IPs: ips, Server: true},
			// Serve the CA after the leaf: a joining worker carries only
			// the CA's hash and learns the certificate from this chain
			// (see join).
			chain: true,
		},
		{
			Name: "kube-apiserver kubelet client", Users: "kube-apiserver to the kubelets (loads it at each handshake); the node API's relay",
			File: env.Path(apiKubeletClientCert), KeyFile: env.Path(apiKubeletClientKey),
			ca: clusterCA, req: pki.CertRequest{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Client: true},
		},
		{
			Name: "front-proxy client", Users: "kube-apiserver to aggregated APIs (watches it)",
			File: env.Path(frontProxyClientCert), KeyFile: env.Path(frontProxyClientKey),
			ca: frontProxyCA, req: pki.CertRequest{CommonName: "front-proxy-client", Client: true},
		},
	}
}

// Pod Security Admission's cluster-wide defaults, for namespaces that set
// no level of their own (node config podSecurity; by default pods that
// escape the node, privileged, host namespaces, hostPath, are refused,
// and what the restricted profile would refuse is warned to the client and
// recorded in the audit log; kube-system holds the cluster's own workloads
// and is exempt). A namespace opts out with the label
// pod-security.kubernetes.io/enforce=privileged.
func admissionConfig(p node.PodSecurity) string {
	exempt, _ := json.Marshal(p.ExemptNamespaces)
	return fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: %s
      enforce-version: latest
      audit: %s
      audit-version: latest
      warn: %s
      warn-version: latest
    exemptions:
      namespaces: %s
`, p.Enforce, p.Audit, p.Warn, exempt)
}

// auditPolicy records who changed what, never a Secret's body: metadata for
// Secrets, ConfigMaps and tokens (their bodies are credentials), request
// bodies for other writes, nothing for reads by the cluster's own
// components, health checks and events (they would drown the rest).
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: [/healthz*, /livez*, /readyz*, /version]
- level: None
  resources: [{group: "", resources: [events]}, {group: events.k8s.io, resources: [events]}]
- level: None
  userGroups: [system:nodes]
  verbs: [get, list, watch]
- level: None
  users: [system:kube-controller-manager, system:kube-scheduler, system:apiserver]
  verbs: [get, list, watch]
- level: None
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: Metadata
  resources:
  - {group: "", resources: [secrets, configmaps, serviceaccounts/token]}
  - {group: authentication.k8s.io, resources: [tokenreviews]}
  - {group: certificates.k8s.io, resources: [certificatesigningrequests]}
- level: Request
  verbs: [create, update, patch, delete, deletecollection]
- level: Metadata
`

// The audit log's rotation: at most auditLogBytes on disk, or in RAM on a
// diskless master (its cgroup's memory.high leaves room for them).
const (
	auditLogMaxMiB  = 10
	auditLogBackups = 3
	auditLogBytes   = (auditLogBackups + 1) * auditLogMaxMiB * mib
)

// AuditLog is the API server's audit log (JSON lines), beside the
// components' logs.
func AuditLog(env *Env) string { return env.Path("log", "audit.log") }

// apiServerSANs are every name and address a client may use to reach the
// API: the in-cluster service names, its first service IP, this node, the
// cluster endpoint's host, and the virtual IP. (The certificate is issued
// here, at every start of a master, by the cluster CA the master image
// holds: a VIP added to the node config later is in it after a restart.)
func apiServerSANs(env *Env) ([]string, []net.IP, error) {
	dns := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc." + env.Cluster.ClusterDomain, "localhost", env.NodeName}
	ips := nodeIPs(env)
	svcIP, err := firstIP(env.Cluster.ServiceCIDR)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster serviceCIDR: %w", err)
	}
	ips = append(ips, svcIP)
	if host, _, err := net.SplitHostPort(trimScheme(env.Cluster.Endpoint)); err == nil {
		if ip := net.ParseIP(host); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, host)
		}
	}
	if vip, ok := env.Config.VIPAddr(); ok {
		ips = append(ips, net.IP(vip.AsSlice()))
	}
	return dns, ips, nil
}

func (APIServer) Flags(env *Env) map[string]string {
	c := env.Cluster
	flags := map[string]string{
		"advertise-address":                  env.Config.Address,
		"bind-address":                       apiBindAddress(env),
		"secure-port":                        strconv.Itoa(env.Config.Ports.APIServer),
		"etcd-servers":                       etcdServers(env),
		"etcd-cafile":                        env.Path(etcdCACert),
		"etcd-certfile":                      env.Path(etcdClientCert),
		"etcd-keyfile":                       env.Path(etcdClientKey),
		"client-ca-file":                     env.Path(apiCACert),
		"tls-cert-file":                      env.Path(apiServingCert),
		"tls-private-key-file":               env.Path(apiServingKey),
		"kubelet-client-certificate":         env.Path(apiKubeletClientCert),
		"kubelet-client-key":                 env.Path(apiKubeletClientKey),
		"kubelet-preferred-address-types":    "InternalIP,Hostname",
		"kubelet-certificate-authority":      env.Path(apiCACert),
		"authorization-mode":                 "Node,RBAC",
		"enable-admission-plugins":           "NodeRestriction",
		"authentication-config":              env.Path(apiAuthnConfig),
		"enable-bootstrap-token-auth":        "true",
		"service-account-issuer":             serviceAccountIssuer,
		"service-account-key-file":           env.Cluster.Paths().ServiceAccountPub,
		"service-account-signing-key-file":   env.Cluster.Paths().ServiceAccountKey,
		"service-cluster-ip-range":           c.ServiceCIDR,
		"encryption-provider-config":         env.Path(apiEncryptionConfig),
		"requestheader-client-ca-file":       env.Path(frontProxyCACert),
		"requestheader-allowed-names":        "front-proxy-client",
		"requestheader-extra-headers-prefix": "X-Remote-Extra-",
		"requestheader-group-headers":        "X-Remote-Group",
		"requestheader-username-headers":     "X-Remote-User",
		"proxy-client-cert-file":             env.Path(frontProxyClientCert),
		"proxy-client-key-file":              env.Path(frontProxyClientKey),
		"allow-privileged":                   "true",
		"profiling":                          "false",
		"cert-dir":                           env.Path("pki/apiserver-generated"),
		"admission-control-config-file":      env.Path(apiAdmissionConfig),
		"audit-policy-file":                  env.Path(apiAuditPolicy),
		"audit-log-path":                     AuditLog(env),
		"audit-log-format":                   "json",
		// 10 MiB × 4 files at most: a diskless master keeps its logs in RAM.
		"audit-log-maxsize":   strconv.Itoa(auditLogMaxMiB),
		"audit-log-maxbackup": strconv.Itoa(auditLogBackups),
		"audit-log-maxage":    "30",
		// No watch cache flags: in v1.37 the watch caches size themselves
		// (--watch-cache-sizes only takes 0, to turn one off) and the
		// events' caches are already off. The API server's memory is set
		// by its share of the node (memory.go).
	}
	// The apiserver publishes its address as the endpoint of the
	// "kubernetes" Service, and refuses a loopback one. On loopback (host
	// mode) no pod could reach it anyway: don't publish.
	if ip := net.ParseIP(env.Config.Address); ip != nil && ip.IsLoopback() {
		flags["endpoint-reconciler-type"] = "none"
	}
	return flags
}

// Ready asks /readyz anonymously, as a load balancer would, and checks the
// serving certificate against the cluster CA.
func (APIServer) Ready(ctx context.Context, env *Env) error {
	return probeHTTPS(ctx, env.URL(env.Config.Ports.APIServer)+"/readyz",
		&tls.Config{RootCAs: caPool(env.Cluster.CA.CertPEM), ServerName: "localhost"}, "ok")
}
