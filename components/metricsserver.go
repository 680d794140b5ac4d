package components

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"

	"kiln/configs/node"
	"kiln/pki"
)

// MetricsServer serves the resource metrics API (metrics.k8s.io: kubectl
// top, the HorizontalPodAutoscaler): upstream metrics-server
// (sigs.k8s.io/metrics-server, see components/entry), compiled into the
// node binary and run by every master as a process, not as a pod, so it
// needs no image and runs on control-plane-only masters too.
//
// Each API server reaches its own master's metrics-server on loopback:
// the APIService's Service (components/addons/metrics.yaml) is an
// ExternalName for localhost, so the aggregator dials
// https://localhost:PORT and verifies the serving certificate, issued
// here from the cluster CA, against the cluster CA for the name
// metrics-server.kube-system.svc. Nothing listens beyond loopback, there
// is no ClusterIP to route (a control-plane-only master has no
// kube-proxy), and a master that is down takes only its own API server's
// view with it.
//
// It scrapes every node's kubelet (/metrics/resource on its InternalIP)
// with its own client certificate and verifies each kubelet's serving
// certificate against the cluster CA (kubelets' serving certificates are
// CA-signed: components/kubelet.go, csr-approver).
type MetricsServer struct{}

var _ Component = MetricsServer{}
var _ Prober = MetricsServer{}
var _ Listener = MetricsServer{}

const (
	metricsServerKubeconfig = "kubeconfig/kiln-metrics-server.conf"
	metricsServerCert       = "pki/metrics-server.crt"
	metricsServerKey        = "pki/metrics-server.key"
	// metricsServerUser is its identity; components/addons/metrics.yaml
	// grants it its rights (read nodes and pods, the kubelets' metrics,
	// delegated authentication and authorization).
	metricsServerUser = "kiln:metrics-server"
	// MetricsServerName is the DNS name the aggregator verifies the
	// serving certificate for: the APIService's Service.
	MetricsServerName = "metrics-server.kube-system.svc"
)

func (MetricsServer) Name() string       { return node.ComponentMetricsServer }
func (MetricsServer) Roles() []node.Role { return []node.Role{node.RoleMaster} }

// DependsOn the addons: its rights are there; started before them it
// exits, refused the front proxy's CA.
func (MetricsServer) DependsOn() []string { return []string{node.ComponentAddons} }

func (MetricsServer) Listens(env *Env) []string {
	return []string{hostPort("127.0.0.1", env.Config.Ports.MetricsServer)}
}

func (MetricsServer) Prepare(env *Env) error {
	if err := pki.WriteFile(env.Path(apiCACert), env.Cluster.CA.CertPEM, false); err != nil {
		return err
	}
	return issueAll(env, MetricsServer{}.Certs(env))
}

// Certs: its client certificate, to the API and to the kubelets
// (client-go: at each handshake), and its serving certificate (a watched
// file, as the API server's).
func (MetricsServer) Certs(env *Env) []Cert {
	return []Cert{
		clientKubeconfig(env, env.Path(metricsServerKubeconfig), metricsServerUser, nil, "metrics-server, to the API and the kubelets (client-go: at each handshake)"),
		{
			Name: "metrics-server serving", Users: "metrics-server (watches it), for the API server's aggregator",
			File: env.Path(metricsServerCert), KeyFile: env.Path(metricsServerKey),
			ca: clusterCA, req: pki.CertRequest{
				CommonName: MetricsServerName,
				DNSNames:   []string{MetricsServerName, "metrics-server.kube-system.svc.cluster.local", "localhost"},
				IPs:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
				Server:     true,
			},
		},
	}
}

func (MetricsServer) Flags(env *Env) map[string]string {
	kc := env.Path(metricsServerKubeconfig)
	return map[string]string{
		"kubeconfig":                      kc,
		"authentication-kubeconfig":       kc,
		"authorization-kubeconfig":        kc,
		"bind-address":                    "127.0.0.1",
		"secure-port":                     strconv.Itoa(env.Config.Ports.MetricsServer),
		"tls-cert-file":                   env.Path(metricsServerCert),
		"tls-private-key-file":            env.Path(metricsServerKey),
		"kubelet-certificate-authority":   env.Path(apiCACert),
		"kubelet-preferred-address-types": "InternalIP,Hostname",
		"kubelet-use-node-status-port":    "true",
		// Upstream's default: kubectl top answers within a minute of a
		// node's Ready.
		"metric-resolution": "15s",
	}
}

// Ready is /livez: the process serves. Its /readyz waits for a first
// scrape of the nodes, which a master whose kubelet is not yet up has
// not had; the APIService's own availability says that to kubectl.
func (MetricsServer) Ready(ctx context.Context, env *Env) error {
	return probeHTTPS(ctx, "https://"+hostPort("127.0.0.1", env.Config.Ports.MetricsServer)+"/livez",
		&tls.Config{RootCAs: caPool(env.Cluster.CA.CertPEM), ServerName: MetricsServerName}, "ok")
}
