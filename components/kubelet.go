package components

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"

	"kiln/configs/node"
	"kiln/pki"
)

// Kubelet is upstream kubelet on cgroup v2 with the cgroupfs driver (there
// is no systemd), talking CRI to kiln's containerd. A worker joins by TLS
// bootstrap (bootstrap token → CSR → approved by the controller-manager);
// a master's kubelet gets its client certificate straight from the CA it
// holds. The kubelet serves its API (logs, exec, metrics) on :10250 with a
// certificate of the cluster CA (see kubeletConfiguration); its
// unauthenticated read-only port stays off.
type Kubelet struct{}

var _ Component = Kubelet{}
var _ Prober = Kubelet{}
var _ Conditional = Kubelet{}
var _ Listener = Kubelet{}

func (Kubelet) Name() string                  { return node.ComponentKubelet }
func (Kubelet) Roles() []node.Role            { return []node.Role{node.RoleMaster, node.RoleWorker} }
func (Kubelet) Enabled(cfg *node.Config) bool { return cfg.RunsPods() }
func (Kubelet) DependsOn() []string {
	return []string{node.ComponentImportImages, node.ComponentJoin, node.ComponentAPILB}
}
func (Kubelet) Listens(env *Env) []string {
	return []string{hostPort(env.Config.Address, KubeletPort), hostPort("127.0.0.1", kubeletHealthzPort)}
}

// KubeletPort is the kubelet's API port (logs, exec, metrics).
const KubeletPort = 10250

const (
	kubeletHealthzPort       = 10248
	kubeletConfig            = "config/kubelet.yaml"
	kubeletDir               = "kubelet"
	controlPlaneTaintKey     = "node-role.kubernetes.io/control-plane"
	kubeletResolvConfDefault = "/etc/resolv.conf"
	kubeletServingCert       = "kubelet/serving.crt"
	kubeletServingKey        = "kubelet/serving.key"
)

// KubeletKubeconfig is the node's own credentials (system:node:NAME),
// which kube-proxy and the pod network use too.
func KubeletKubeconfig(env *Env) string { return env.Path(kubeletDir, "kubeconfig") }

// apiEndpoint is the API server this node's node-side components use: a
// master's own, a worker's API load balancer (APILB, which reaches the
// masters at apiLBSeeds and those it learns). The join writes it into the
// node's kubeconfig, which the kubelet, kube-proxy, the pod network and
// the network policies use.
func apiEndpoint(env *Env) string {
	if env.Config.Role == node.RoleMaster {
		return env.URL(env.Config.Ports.APIServer)
	}
	return apiLBURL()
}

// kubeletSysctls are the kernel settings the kubelet insists on with
// protectKernelDefaults (it refuses to start rather than change them
// itself): memory overcommit for the OOM killer to work per cgroup, an oops
// is a panic, and a panic reboots after 10 s (the image's panic=-1 said at
// once; QEMU's -no-reboot still exits).
var kubeletSysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

func (k Kubelet) Prepare(env *Env) error {
	if err := setSysctls(kubeletSysctls, nil, "protectKernelDefaults"); err != nil {
		return err
	}
	if err := mkdirs(env.Path(kubeletDir), env.Path("config")); err != nil {
		return err
	}
	if env.Config.Role == node.RoleMaster {
		// The master holds the CA: it gives its kubelet its first client
		// certificate directly instead of through a join (the kubelet
		// rotates it from then on), and the node's kubeconfig names it (a
		// worker's join writes both).
		if err := seedKubeletClient(env); err != nil {
			return err
		}
		if err := writeNodeKubeconfig(env); err != nil {
			return err
		}
		// And its serving certificate, for the API server to verify.
		if err := issueAll(env, k.Certs(env)); err != nil {
			return err
		}
	}
	return pki.WriteFile(env.Path(kubeletConfig), []byte(kubeletConfiguration(env)), false)
}

// Certs: a master's kubelet serving certificate, which the kubelet
// watches (ReloadKubeletServerCertificateFile, on by default since
// v1.31) and the node API serves (read at each handshake). A worker's
// kubelet asks the cluster for its own and rotates it (KubeletRotated).
func (Kubelet) Certs(env *Env) []Cert {
	if env.Config.Role != node.RoleMaster {
		return nil
	}
	c := kubeletServing(env)
	c.Users = "kubelet (watches it); the node API (at each handshake)"
	return []Cert{c}
}

// kubeletServing is a master's serving certificate of the kubelet and
// the node API (NodeAPIServingFiles).
func kubeletServing(env *Env) Cert {
	return Cert{
		Name: "kubelet serving", File: env.Path(kubeletServingCert), KeyFile: env.Path(kubeletServingKey),
		ca: clusterCA, req: pki.CertRequest{
			CommonName: "system:node:" + env.NodeName, Organization: []string{"system:nodes"},
			DNSNames: []string{env.NodeName}, IPs: nodeIPs(env), Server: true,
		},
	}
}

func kubeletConfiguration(env *Env) string {
	resolv := ""
	if _, err := os.Stat(kubeletResolvConfDefault); err == nil {
		resolv = kubeletResolvConfDefault
	}
	taints := ""
	if env.Config.Role == node.RoleMaster && !env.Config.Schedulable {
		taints = fmt.Sprintf("registerWithTaints:\n- key: %s\n  effect: NoSchedule\n", controlPlaneTaintKey)
	}
	// The API server verifies the kubelet's serving certificate against
	// the cluster CA (--kubelet-certificate-authority): a master issues its
	// own (and renews it in place); a worker asks for one
	// (serverTLSBootstrap), kiln's csr-approver signs it off when its
	// names are the node's, and the kubelet rotates it. Every kubelet
	// rotates its client certificate (rotateCertificates), which the
	// controller-manager approves and signs.
	serving := "serverTLSBootstrap: true\n"
	if env.Config.Role == node.RoleMaster {
		serving = fmt.Sprintf("tlsCertFile: %s\ntlsPrivateKeyFile: %s\n", env.Path(kubeletServingCert), env.Path(kubeletServingKey))
	}
	return fmt.Sprintf(`# Written by kiln at every start; edits are lost.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: %[2]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %[3]d
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[4]s
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%[5]s
clusterDNS: [%[6]s]
clusterDomain: %[7]s
resolvConf: %[8]q
rotateCertificates: %[9]t
failSwapOn: false
# Confinement: every container gets the runtime's seccomp profile unless it
# asks otherwise, and the kubelet checks (never changes) the kernel settings
# above (CIS 4.2.6, 5.7.2).
seccompDefault: true
protectKernelDefaults: true
# Images are preloaded and can never be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
%[10]s%[11]s`,
		env.Config.Address, KubeletPort, kubeletHealthzPort, env.Path(apiCACert),
		ContainerdSocket(env), env.Cluster.ClusterDNS, env.Cluster.ClusterDomain, resolv,
		true, taints, serving) + kubeletMemoryConfig(env)
}

// kubeletMemoryConfig is the kubelet's memory settings, sized to the node
// (memory.go): what the node's components and the system keep from the
// pods (the pods' cgroup's memory.max is the rest), when pods are evicted,
// and how much of their logs each container keeps. Nothing when the
// node's memory is unknown: upstream's defaults.
func kubeletMemoryConfig(env *Env) string {
	km, ok := kubeletReserved(env)
	if !ok {
		return ""
	}
	return fmt.Sprintf(`# Memory, sized to this node's %[1]d MiB.
kubeReserved:
  memory: %[2]dMi
systemReserved:
  memory: %[3]dMi
evictionHard:
  memory.available: %[4]dMi
# The other eviction signals keep upstream's defaults.
mergeDefaultEvictionSettings: true
containerLogMaxSize: %[5]dMi
containerLogMaxFiles: %[6]d
`, env.Memory.Total>>20, km.KubeReserved>>20, km.SystemReserved>>20, km.EvictionHard>>20, km.LogMaxSize>>20, km.LogMaxFiles)
}

func (Kubelet) Flags(env *Env) map[string]string {
	f := map[string]string{
		"config":            env.Path(kubeletConfig),
		"kubeconfig":        KubeletKubeconfig(env),
		"cert-dir":          env.Path(kubeletDir, "pki"),
		"root-dir":          env.Path(kubeletDir),
		"hostname-override": env.NodeName,
		"node-ip":           env.Config.Address,
	}
	// Labels the kubelet may set on its own node (NodeRestriction allows
	// other prefixes than kubernetes.io): what kiln runs it on.
	f["node-labels"] = "kiln.dev/role=" + string(env.Config.Role) + ",kiln.dev/cgroup=" + cgroupVersion()
	if env.Config.Storage.StateDisk != "" {
		// Where local volumes may go (LocalStorage).
		f["node-labels"] += "," + StateDiskLabel + "=true"
	}
	return f
}

// Ready is the kubelet's /healthz answering and its credentials written (a
// joining worker's kubelet writes its kubeconfig once its CSR is signed).
func (Kubelet) Ready(ctx context.Context, env *Env) error {
	if _, err := os.Stat(KubeletKubeconfig(env)); err != nil {
		return fmt.Errorf("no kubeconfig yet (TLS bootstrap not done): %w", err)
	}
	// A bootstrapping kubelet writes its kubeconfig before the certificate
	// it names is signed.
	if env.Config.Role == node.RoleWorker {
		if _, err := os.Stat(env.Path(kubeletDir, "pki", "kubelet-client-current.pem")); err != nil {
			return fmt.Errorf("client certificate not signed yet: %w", err)
		}
	}
	return probeHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/healthz", kubeletHealthzPort), "ok")
}

// probeHTTP checks a plain-HTTP health endpoint on loopback.
func probeHTTP(ctx context.Context, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{}, DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	buf := make([]byte, 512)
	n, _ := resp.Body.Read(buf)
	body := strings.TrimSpace(string(buf[:n]))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s %s", url, resp.Status, body)
	}
	if want != "" && body != want {
		return fmt.Errorf("%s: %q", url, body)
	}
	return nil
}

// KubeProxy is upstream kube-proxy in nftables mode, with the node's own
// credentials (the system:nodes group is bound to system:node-proxier by
// the add-ons).
type KubeProxy struct{}

var _ Component = KubeProxy{}
var _ Prober = KubeProxy{}
var _ Conditional = KubeProxy{}

const (
	kubeProxyConfig      = "config/kube-proxy.yaml"
	kubeProxyHealthzPort = 10256
	kubeProxyMetricsPort = 10249
)

func (KubeProxy) Name() string                  { return node.ComponentKubeProxy }
func (KubeProxy) Roles() []node.Role            { return []node.Role{node.RoleMaster, node.RoleWorker} }
func (KubeProxy) Enabled(cfg *node.Config) bool { return cfg.RunsPods() }
func (KubeProxy) DependsOn() []string           { return []string{node.ComponentKubelet, node.ComponentAPILB} }
func (KubeProxy) Listens(env *Env) []string {
	return []string{hostPort("127.0.0.1", kubeProxyHealthzPort), hostPort("127.0.0.1", kubeProxyMetricsPort)}
}

func (KubeProxy) Prepare(env *Env) error {
	conf := fmt.Sprintf(`# Written by kiln at every start; edits are lost.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: %[1]s
hostnameOverride: %[2]s
bindAddress: %[3]s
clusterCIDR: %[4]s
healthzBindAddress: 127.0.0.1:%[5]d
metricsBindAddress: 127.0.0.1:%[6]d
nodePortAddresses: [primary]
conntrack:
  # Leave the kernel's conntrack table size alone.
  maxPerCore: 0
  min: 0
`, KubeletKubeconfig(env), env.NodeName, env.Config.Address, env.Cluster.PodCIDR, kubeProxyHealthzPort, kubeProxyMetricsPort)
	return pki.WriteFile(env.Path(kubeProxyConfig), []byte(conf), false)
}

func (KubeProxy) Flags(env *Env) map[string]string {
	return map[string]string{"config": env.Path(kubeProxyConfig)}
}

func (KubeProxy) Ready(ctx context.Context, env *Env) error {
	return probeHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/livez", kubeProxyHealthzPort), "")
}

// PodNetwork is flannel (its Kubernetes subnet manager and VXLAN backend,
// see components/entry): each node's pods get the node's pod CIDR on a
// bridge, and other nodes' pod CIDRs are reached over VXLAN between the
// node addresses.
type PodNetwork struct{}

var _ Component = PodNetwork{}
var _ Prober = PodNetwork{}
var _ Conditional = PodNetwork{}

const podNetworkConfig = "config/flannel-net.json"

func (PodNetwork) Name() string                  { return node.ComponentFlannel }
func (PodNetwork) Roles() []node.Role            { return []node.Role{node.RoleMaster, node.RoleWorker} }
func (PodNetwork) Enabled(cfg *node.Config) bool { return cfg.RunsPods() }
func (PodNetwork) DependsOn() []string           { return []string{node.ComponentKubelet, node.ComponentAPILB} }

// CNIConfFile is the pod network's CNI configuration; the node is Ready
// (NetworkReady) once it exists.
func CNIConfFile(env *Env) string { return CNIConfDir(env) + "/10-kiln.conflist" }

func (PodNetwork) Prepare(env *Env) error {
	// A configuration left from the last run would make the node Ready
	// before the network is: the pod network writes it when it is.
	if err := os.Remove(CNIConfFile(env)); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := mkdirs(CNIConfDir(env)); err != nil {
		return err
	}
	conf := fmt.Sprintf(`{"Network": %q, "EnableIPv4": true, "Backend": {"Type": "vxlan"}}`+"\n", env.Cluster.PodCIDR)
	return pki.WriteFile(env.Path(podNetworkConfig), []byte(conf), false)
}

func (PodNetwork) Flags(env *Env) map[string]string {
	return map[string]string{
		"kubeconfig": KubeletKubeconfig(env),
		"node-name":  env.NodeName,
		"net-conf":   env.Path(podNetworkConfig),
		"public-ip":  env.Config.Address,
		"cni-conf":   CNIConfFile(env),
	}
}

func (PodNetwork) Ready(ctx context.Context, env *Env) error {
	_, err := os.Stat(CNIConfFile(env))
	return err
}

// cgroupVersion is "v2" when /sys/fs/cgroup is the unified hierarchy.
func cgroupVersion() string {
	var st syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/cgroup", &st); err == nil && st.Type == 0x63677270 { // CGROUP2_SUPER_MAGIC
		return "v2"
	}
	return "v1"
}
