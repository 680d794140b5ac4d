package components

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"kiln/configs/cluster"
	"kiln/configs/node"
)

func testEnv(t *testing.T) *Env {
	t.Helper()
	dir := t.TempDir()
	cl, err := cluster.Generate(filepath.Join(dir, "cluster"), cluster.Options{Name: "unit", Endpoint: "master.example:6443"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := node.Default()
	cfg.Address = "192.0.2.10"
	return &Env{Config: cfg, Cluster: cl, NodeName: "m0", DataDir: filepath.Join(dir, "data")}
}

func TestForRoleOrderAndDependencies(t *testing.T) {
	noPods := node.Default()
	noPods.RunPods = false
	for _, tc := range []struct {
		name string
		cfg  node.Config
		want []string
	}{
		{"master", node.Default(), []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "addons", "csr-approver", "metrics-server", "local-storage",
			"containerd", "import-images", "kubelet", "flannel", "kube-proxy", "network-policy"}},
		{"master without pods", noPods, []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "addons", "csr-approver", "metrics-server", "local-storage"}},
		{"worker", func() node.Config { c := node.Default(); c.Role = node.RoleWorker; c.RunPods = false; return c }(),
			[]string{"api-lb", "join", "containerd", "import-images", "kubelet", "flannel", "kube-proxy", "network-policy"}},
	} {
		var names []string
		comps := For(&tc.cfg)
		present := map[string]bool{}
		for _, c := range comps {
			present[c.Name()] = true
		}
		seen := map[string]bool{}
		for _, c := range comps {
			for _, d := range c.DependsOn() {
				if present[d] && !seen[d] {
					t.Errorf("%s: %s depends on %s, which is not started before it", tc.name, c.Name(), d)
				}
			}
			seen[c.Name()] = true
			names = append(names, c.Name())
		}
		if !reflect.DeepEqual(names, tc.want) {
			t.Errorf("%s runs %v, want %v", tc.name, names, tc.want)
		}
	}
}

func TestPrepareAndArgs(t *testing.T) {
	env := testEnv(t)
	// Never change the test host's kernel settings.
	sysctlDir = t.TempDir()
	for _, d := range []string{"net/ipv4", "vm", "kernel/keys"} {
		os.MkdirAll(filepath.Join(sysctlDir, d), 0o755)
	}
	for _, c := range ForRole(node.RoleMaster) {
		if err := c.Prepare(env); err != nil {
			t.Fatalf("%s: %v", c.Name(), err)
		}
		argv, _ := Args(c, env)
		again, _ := Args(c, env)
		if !reflect.DeepEqual(argv, again) {
			t.Errorf("%s: argv not deterministic", c.Name())
		}
		// Every file a flag names exists after Prepare.
		for _, a := range argv {
			v := a[strings.Index(a, "=")+1:]
			// Files made at run time: containerd's socket, the image
			// directory of an image, the CNI file the pod network writes, the
			// record of imported images.
			runtime := strings.HasPrefix(a, "--address=") || strings.HasPrefix(a, "--dir=") || strings.HasPrefix(a, "--cni-conf=") || strings.HasPrefix(a, "--audit-log-path=") || strings.HasPrefix(a, "--record=")
			if strings.HasPrefix(v, "/") && !runtime && !strings.HasSuffix(a, "-dir="+v) && !strings.Contains(a, "--cert-dir") {
				if _, err := os.Stat(v); err != nil {
					t.Errorf("%s: %s: %v", c.Name(), a, err)
				}
			}
		}
	}
}

func TestAPIServerCertificateNames(t *testing.T) {
	env := testEnv(t)
	if err := (APIServer{}).Prepare(env); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(env.Path(apiServingCert))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(env.Cluster.CA.Cert)
	for _, name := range []string{"kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost", "m0", "master.example", "127.0.0.1", "192.0.2.10", "10.96.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("serving certificate not valid for %s: %v", name, err)
		}
	}
}

func TestLoopbackDisablesEndpointReconciler(t *testing.T) {
	env := testEnv(t)
	if _, ok := (APIServer{}).Flags(env)["endpoint-reconciler-type"]; ok {
		t.Error("a routable address must publish the kubernetes endpoint")
	}
	env.Config.Address = "127.0.0.1"
	if v := (APIServer{}).Flags(env)["endpoint-reconciler-type"]; v != "none" {
		t.Errorf("loopback: endpoint-reconciler-type=%q, want none", v)
	}
}

func TestExtraArgsOverride(t *testing.T) {
	env := testEnv(t)
	env.Config.ExtraArgs = map[string]map[string]string{"kube-scheduler": {"v": "3", "profiling": ""}}
	argv, over := Args(Scheduler{}, env)
	joined := strings.Join(argv, " ")
	if !strings.Contains(joined, "--v=3") || strings.Contains(joined, "--profiling") {
		t.Errorf("argv %v", argv)
	}
	if len(over) != 1 || !strings.Contains(over[0], "profiling") {
		t.Errorf("overrides %v, want the removed default profiling", over)
	}
}

func TestFirstIP(t *testing.T) {
	for cidr, want := range map[string]string{"10.96.0.0/12": "10.96.0.1", "fd00::/108": "fd00::1"} {
		ip, err := firstIP(cidr)
		if err != nil || ip.String() != want {
			t.Errorf("firstIP(%s) = %v, %v; want %s", cidr, ip, err, want)
		}
	}
}

// TestNamesMatchConfig: every component has its own name, depends only on
// components that exist, and the ones that serve (not the tasks) are
// exactly those whose flags the node config's extraArgs may override.
func TestNamesMatchConfig(t *testing.T) {
	all := All()
	names := map[string]bool{}
	var serving []string
	for _, c := range all {
		if names[c.Name()] {
			t.Errorf("two components named %q", c.Name())
		}
		names[c.Name()] = true
		if _, task := c.(Task); !task {
			serving = append(serving, c.Name())
		}
	}
	for _, c := range all {
		for _, d := range c.DependsOn() {
			if !names[d] {
				t.Errorf("%s depends on %q, which is not a component", c.Name(), d)
			}
		}
	}
	known := node.KnownComponents()
	slices.Sort(serving)
	slices.Sort(known)
	if !slices.Equal(serving, known) {
		t.Errorf("serving components %v, but the config's extraArgs accept %v (configs/node/components.go)", serving, known)
	}
	all[0] = nil
	if All()[0] == nil {
		t.Error("All returns a shared slice")
	}
}

// Pod Security defaults follow the node config; the audit policy never
// records a Secret's body (the rule for secrets, metadata only, comes
// before the one that records request bodies).
func TestPodSecurityAndAuditPolicy(t *testing.T) {
	env := testEnv(t)
	env.Config.PodSecurity.Enforce = "restricted"
	if err := (APIServer{}).Prepare(env); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(env.Path(apiAdmissionConfig))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"enforce: restricted", "warn: restricted", `namespaces: ["kube-system"]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("admission config lacks %q:\n%s", want, b)
		}
	}
	p, err := os.ReadFile(env.Path(apiAuditPolicy))
	if err != nil {
		t.Fatal(err)
	}
	secrets, bodies := strings.Index(string(p), "resources: [secrets"), strings.Index(string(p), "level: Request")
	if secrets < 0 || bodies < 0 || secrets > bodies {
		t.Errorf("audit policy: secrets must be matched (Metadata) before request bodies are recorded:\n%s", p)
	}
	argv, _ := Args(APIServer{}, env)
	if !slices.Contains(argv, "--audit-log-path="+AuditLog(env)) || !slices.Contains(argv, "--kubelet-certificate-authority="+env.Path(apiCACert)) {
		t.Errorf("apiserver flags: %v", argv)
	}
}

// A worker's node components reach the API through its load balancer,
// which starts from controlPlane.masters, else apiEndpoint, else the
// cluster's endpoint; a master's use its own API server and run none.
func TestAPILB(t *testing.T) {
	env := testEnv(t)
	env.Config.Role = node.RoleWorker
	lb := "127.0.0.1:6444"
	for _, tc := range []struct {
		name        string
		masters     []string
		apiEndpoint string
		want        string
	}{
		{"cluster endpoint", nil, "", "master.example:6443"},
		{"apiEndpoint", nil, "https://10.1.0.5:443", "10.1.0.5:443"},
		{"masters", []string{"10.0.0.10", "10.0.0.11", "fd00::12"}, "https://10.1.0.5:443", "10.0.0.10:6443,10.0.0.11:6443,[fd00::12]:6443"},
	} {
		env.Config.ControlPlane.Masters, env.Config.APIEndpoint = tc.masters, tc.apiEndpoint
		f := APILB{}.Flags(env)
		if f["seeds"] != tc.want || f["listen"] != lb || f["kubeconfig"] != KubeletKubeconfig(env) {
			t.Errorf("%s: flags %v, want seeds %s", tc.name, f, tc.want)
		}
		if j := (Join{}).Flags(env); j["endpoint"] != "https://"+lb || j["masters"] != tc.want {
			t.Errorf("%s: join's endpoint %s and masters %s, want https://%s and %s", tc.name, j["endpoint"], j["masters"], lb, tc.want)
		}
	}
	if l := (APILB{}).Listens(env); !slices.Equal(l, []string{lb}) || hostPort(loopback, APILBPort) != lb {
		t.Errorf("listens on %v", l)
	}
	worker := node.Default()
	worker.Role = node.RoleWorker
	for _, c := range For(&worker) {
		if n := c.Name(); n == node.ComponentJoin || n == node.ComponentKubelet || n == node.ComponentKubeProxy || n == node.ComponentFlannel {
			if !slices.Contains(c.DependsOn(), node.ComponentAPILB) {
				t.Errorf("%s does not wait for the API load balancer", n)
			}
		}
	}
	master := node.Default()
	for _, c := range For(&master) {
		if c.Name() == node.ComponentAPILB {
			t.Error("a master runs the API load balancer")
		}
	}
	env.Config.Role = node.RoleMaster
	if got := apiEndpoint(env); got != "https://192.0.2.10:6443" {
		t.Errorf("a master's endpoint %s, want its own API server", got)
	}
}
