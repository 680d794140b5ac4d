//go:build vm

package vm

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/qemu/vmcluster"
)

// TestCluster is the product's promise: a master and a worker booted from
// their images on a private L2 form a cluster; workloads spread over both
// nodes, talk across them and find each other by DNS; pods pull images
// through a mirror and from a private registry (test registries on the
// host, as the node config's registries say); the worker survives
// its runtime and kubelet being killed and a reboot; a worker with a wrong
// token is refused without disturbing anything. One cluster serves every
// step: under TCG each boot costs minutes.
// smallWorkerMemory is TestCluster's worker memory in MiB: the smallest
// found to join and run pods with the compressed root (was 640 before it).
// At 384 MiB the worker joins but thrashes: every component is a kiln-node
// process that pays the whole binary's package initialisation (≈13 MB
// allocated at init, README "Memory").
const smallWorkerMemory = 512

func TestCluster(t *testing.T) {
	dir := t.TempDir()
	genCluster(t, dir)
	master := buildImage(t, dir, "master")
	worker := buildImage(t, dir, "worker")
	// A worker image with a wrong token, built before the VMs run (a
	// build takes the host's CPU from the guests).
	bad := filepath.Join(dir, "badtoken")
	if err := os.CopyFS(bad, os.DirFS(filepath.Join(dir, "cluster"))); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(bad, "secrets", "bootstrap-token"), []byte("zzzzzz.0123456789abcdef\n"), 0o600)
	badImage := filepath.Join(dir, "worker-badtoken")
	e2e.MustKiln(t, "build", "--role", "worker", "--node-binary", e2e.Bin(e2e.KilnNodeBin), "--cluster", bad, "--format", "kernel", "--out", badImage)
	// The registries the master pulls from (registry_test.go), on the
	// host's loopback: the nodes' configs and the master's forwards name
	// them, so they run before the VMs.
	reg := startTestRegistries(t)

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := vmcluster.Up(ctx, vmcluster.Options{
		MasterImage: master, WorkerImage: worker, ClusterDir: filepath.Join(dir, "cluster"),
		StateDir: filepath.Join(dir, "vms"), Workers: 1, Progress: testLog{t}, Append: vmAppend(),
		// The smallest worker found to run pods (issue 11): every
		// scenario below runs on it, a reboot included.
		WorkerMemory: smallWorkerMemory,
		// The worker keeps its volumes (StorageClass local) on a state
		// disk, across its reboot; the master stays diskless.
		WorkerStateDisk: 2048,
		// The master reaches the test registries, and every node's
		// config says how (registry pulls).
		GuestForwards: reg.GuestForwards, Registries: &reg.Registries,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("%s console (tail):\n%s", n.Name, n.VM().Console().Tail(40))
			}
		}
		c.Close()
	})
	// As kiln cluster up does: kiln's node commands find the nodes by
	// name through it.
	stateDir := filepath.Join(dir, "vms")
	if _, err := c.WriteState(stateDir); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, ctx, c, 20*time.Minute)
	readyAt := time.Now()
	t.Logf("FIGURE cluster: QEMU start to both nodes Ready: %s", time.Since(start).Round(time.Second))

	kc := kubectl(c.Kubeconfig, fmt.Sprintf("https://127.0.0.1:%d", c.APIPort))
	k := kc.Run
	mustK := func(args ...string) string {
		t.Helper()
		return kc.Must(t, args...)
	}
	// mustKT is mustK for a subtest: a failure fails that subtest.
	mustKT := func(t *testing.T) func(...string) string {
		return func(args ...string) string { t.Helper(); return kc.Must(t, args...) }
	}

	// Both nodes: the version, the runtime, cgroup v2.
	out := mustK("get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion} {.metadata.labels.kiln\.dev/cgroup}{"\n"}{end}`)
	t.Logf("nodes:\n%s", out)
	for _, n := range []string{vmcluster.MasterName, "kiln-worker-1"} {
		if !regexp.MustCompile(n + ` v1\.37\.\d+ containerd://2\.\S+ v2`).MatchString(out) {
			t.Errorf("node %s: want v1.37.x, containerd 2.x, cgroup v2 in:\n%s", n, out)
		}
	}
	if d := mustK("describe", "node", "kiln-worker-1"); !strings.Contains(d, "containerd://") || !strings.Contains(d, "kiln.dev/cgroup=v2") {
		t.Errorf("describe node shows no containerd or cgroup v2:\n%s", d)
	}

	// Two replicas of the test image, one per node (anti-affinity; they
	// tolerate the master's taint), and a Service.
	podStart := time.Now()
	apply(t, mustK, echoManifest)
	pods := waitPods(t, k, "app=echo", 2, 10*time.Minute)
	t.Logf("FIGURE cluster: Deployment applied to 2 pods Running: %s", time.Since(podStart).Round(time.Second))
	if pods[0].node == pods[1].node {
		t.Fatalf("both replicas on %s", pods[0].node)
	}
	// Pod to pod across nodes, then the Service by its DNS name.
	a, b := pods[0], pods[1]
	if out := mustK("exec", a.name, "--", "kiln-echo", "get", "http://"+b.ip+":8080/"); !strings.Contains(out, b.name) {
		t.Errorf("%s → %s (%s) across nodes: %q", a.name, b.name, b.ip, out)
	}
	if out := mustK("exec", b.name, "--", "kiln-echo", "get", "http://echo.default.svc.cluster.local/"); !strings.Contains(out, "echo-") {
		t.Errorf("Service by DNS name: %q", out)
	}
	if out := mustK("logs", a.name); !strings.Contains(out, "listening on :8080") {
		t.Errorf("kubectl logs: %q", out)
	}
	// Memory in use on each node (the kubelet's summary: working set of
	// everything on the node), for the figures.
	for _, n := range []string{vmcluster.MasterName, "kiln-worker-1"} {
		out, err := k("get", "--raw", "/api/v1/nodes/"+n+"/proxy/stats/summary")
		var sum struct {
			Node struct {
				Memory struct {
					WorkingSetBytes, AvailableBytes uint64
				} `json:"memory"`
			} `json:"node"`
		}
		if err == nil && json.Unmarshal([]byte(out), &sum) == nil {
			t.Logf("FIGURE cluster: %s memory working set %d MiB, available %d MiB", n, sum.Node.Memory.WorkingSetBytes>>20, sum.Node.Memory.AvailableBytes>>20)
		}
	}
	// Node visibility through the API server.
	for _, p := range []string{"healthz", "pods", "stats/summary", "metrics/cadvisor", "configz"} {
		if out, err := k("get", "--raw", "/api/v1/nodes/kiln-worker-1/proxy/"+p); err != nil || len(out) == 0 {
			t.Errorf("kubelet /%s through the API: %v %.200s", p, err, out)
		}
	}

	// Security defaults: Pod Security baseline refuses a privileged pod
	// in default; a debug DaemonSet (privileged, hostPID, the node's log
	// directory) runs in a namespace labelled privileged.
	if out, err := k("apply", "--dry-run=server", "-f", writeTemp(t, privilegedPod)); err == nil ||
		!strings.Contains(err.Error(), `violates PodSecurity "baseline:latest"`) || !strings.Contains(err.Error(), "privileged") {
		t.Errorf("a privileged pod in default: want PodSecurity's refusal, got %v %s", err, out)
	}
	apply(t, mustK, debugManifest)
	kd := func(args ...string) (string, error) { return k(append([]string{"-n", "kiln-debug"}, args...)...) }
	debugPods := waitPods(t, kd, "app=debug", 2, 5*time.Minute)
	debugOn := map[string]string{}
	for _, p := range debugPods {
		debugOn[p.node] = p.name
	}
	onNode := func(node string, args ...string) (string, error) {
		return kd(append([]string{"exec", debugOn[node], "--"}, args...)...)
	}
	t.Run("security defaults", func(t *testing.T) {
		// The audit log records a ConfigMap create (metadata only), and
		// the pods that the restricted profile would refuse; it never holds
		// a Secret's body (the bootstrap token's secret is in a Secret).
		mustK("create", "configmap", "audit-probe", "--from-literal=k=v")
		var audit string
		testutil.Eventually(t, time.Minute, 2*time.Second, "the audit log records the ConfigMap create", func() error {
			var err error
			audit, err = onNode(vmcluster.MasterName, "kiln-echo", "cat", "/node-log/audit.log")
			if err == nil && !regexp.MustCompile(`"verb":"create".*"resource":"configmaps".*"name":"audit-probe"`).MatchString(audit) {
				err = fmt.Errorf("no create of configmaps/audit-probe in %d bytes of audit log", len(audit))
			}
			return err
		})
		if !strings.Contains(audit, "pod-security.kubernetes.io/audit-violations") {
			t.Errorf("the audit log records no restricted-profile violation")
		}
		tok, _ := os.ReadFile(filepath.Join(dir, "cluster", "secrets", "bootstrap-token"))
		if _, secret, _ := strings.Cut(strings.TrimSpace(string(tok)), "."); secret == "" || strings.Contains(audit, secret) {
			t.Errorf("the audit log holds the bootstrap token's secret (or the token is unreadable: %q)", tok)
		}
		// The controller-manager and the scheduler listen on loopback only
		// (the master's /proc/1/net/tcp, through the hostPID pod).
		tcp, err := onNode(vmcluster.MasterName, "kiln-echo", "cat", "/proc/1/net/tcp")
		if err != nil {
			t.Fatal(err)
		}
		tcp6, _ := onNode(vmcluster.MasterName, "kiln-echo", "cat", "/proc/1/net/tcp6")
		for port, what := range map[int]string{10257: "kube-controller-manager", 10259: "kube-scheduler"} {
			addrs := listeners(tcp, port)
			if strings.Contains(tcp6, fmt.Sprintf(":%04X ", port)) {
				addrs = append(addrs, "an IPv6 address")
			}
			if len(addrs) != 1 || addrs[0] != "127.0.0.1" {
				t.Errorf("%s (%d) listens on %v, want 127.0.0.1 only", what, port, addrs)
			}
		}
		// The API server verifies a kubelet's serving certificate against
		// the cluster CA: the worker's was approved by kiln's csr-approver,
		// and a Node whose kubelet endpoint is the master's etcd (a server
		// certificate of another CA) is refused.
		csrs := mustK("get", "csr", "-o", `jsonpath={range .items[?(@.spec.signerName=="kubernetes.io/kubelet-serving")]}{.spec.username} {.status.conditions[*].reason}{"\n"}{end}`)
		if !strings.Contains(csrs, "system:node:kiln-worker-1 KilnNodeServingCert") {
			t.Errorf("no kubelet serving CSR of kiln-worker-1 approved by kiln:\n%s", csrs)
		}
		apply(t, mustK, rogueNode)
		mustK("patch", "node", "rogue", "--subresource=status", "--type=merge", "-p",
			`{"status":{"addresses":[{"type":"InternalIP","address":"`+c.Node(vmcluster.MasterName).Address+`"}],"daemonEndpoints":{"kubeletEndpoint":{"Port":2379}}}}`)
		out, err := k("get", "--raw", "/api/v1/nodes/rogue/proxy/healthz")
		if err == nil || !strings.Contains(err.Error(), "x509") {
			t.Errorf("a kubelet endpoint with another CA's certificate: want an x509 error, got %v %s", err, out)
		}
		mustK("delete", "node", "rogue")

		// The node firewall: a pod cannot open TCP to the master's etcd,
		// controller-manager, scheduler or status ports (refused: a TCP
		// reset), while the API server's port answers (a TLS error here:
		// the pod has no CA to verify it with).
		master := c.Node(vmcluster.MasterName).Address
		for _, port := range []int{2379, 10257, 10259, 10260} {
			out, err := k("exec", a.name, "--", "kiln-echo", "get", fmt.Sprintf("http://%s:%d/", master, port))
			if err == nil || !strings.Contains(err.Error(), "connection refused") {
				t.Errorf("pod %s → master %s:%d: want connection refused, got %v %s", a.name, master, port, err, out)
			}
		}
		if out, err := k("exec", a.name, "--", "kiln-echo", "get", "https://"+master+":6443/healthz"); err == nil || strings.Contains(err.Error(), "connection refused") {
			t.Errorf("pod %s → master %s:6443: want a TLS error (port open), got %v %s", a.name, master, err, out)
		}

		// NetworkPolicy is enforced: deny all ingress to the echo pods,
		// and pod to pod across nodes stops; allow it from app=echo, and
		// it works again.
		apply(t, mustK, denyEcho)
		testutil.Eventually(t, 2*time.Minute, 3*time.Second, "a deny-all NetworkPolicy stops pod to pod", func() error {
			if out, err := k("exec", a.name, "--", "kiln-echo", "get", "http://"+b.ip+":8080/"); err == nil {
				return fmt.Errorf("%s → %s still answers: %s", a.name, b.ip, out)
			}
			return nil
		})
		apply(t, mustK, allowEcho)
		testutil.Eventually(t, 2*time.Minute, 3*time.Second, "an allow rule restores pod to pod", func() error {
			_, err := k("exec", a.name, "--", "kiln-echo", "get", "http://"+b.ip+":8080/")
			return err
		})
		mustK("delete", "networkpolicy", "deny-echo", "allow-echo")

		// AppArmor is off on purpose (no parser in the image): a pod that
		// asks for a profile is refused by the kubelet with the reason,
		// not left in CreateContainerError.
		apply(t, mustK, appArmorPod)
		testutil.Eventually(t, 3*time.Minute, 2*time.Second, "the AppArmor pod refused with the reason", func() error {
			out, err := k("get", "pod", "apparmor", "-o", "jsonpath={.status.phase} {.status.reason}: {.status.message}")
			if err == nil && !strings.Contains(out, "AppArmor is not enabled on the host") {
				err = fmt.Errorf("pod apparmor: %s", out)
			}
			return err
		})
		mustK("delete", "pod", "apparmor", "--wait=false")
	})

	t.Run("host network reaches a ClusterIP", func(t *testing.T) {
		// Issue 13: the cluster's L2 has no default route, and the kernel
		// routes a packet the node sends itself before kube-proxy's DNAT,
		// so without PID 1's route for the service range a ClusterIP
		// answered "connect: network is unreachable" from the node's own
		// network namespace (hostNetwork pods, and on the master the API
		// server calling webhooks and aggregated APIs), while the pod IP
		// behind it answered. A hostNetwork pod on each node reaches the
		// echo Service by its ClusterIP (TCP), then by its DNS name
		// (kube-dns's ClusterIP over UDP, then TCP).
		kt := mustKT(t)
		apply(t, kt, hostNetManifest)
		defer func() {
			// Foreground: the pods are gone before the next step (the
			// worker runs in 512 MiB).
			if _, err := kd("delete", "daemonset", "hostnet", "--cascade=foreground"); err != nil {
				t.Errorf("deleting the hostNetwork pods: %v", err)
			}
		}()
		clusterIP := kt("get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}")
		for _, p := range waitPods(t, kd, "app=hostnet", 2, 5*time.Minute) {
			// In the node's network namespace, or this checks nothing.
			if want := c.Node(p.node).Address; p.ip != want {
				t.Fatalf("pod %s on %s has IP %s, want the node's %s (hostNetwork)", p.name, p.node, p.ip, want)
			}
			if out, err := kd("exec", p.name, "--", "kiln-echo", "get", "http://"+clusterIP+"/"); err != nil || !strings.Contains(out, "echo-") {
				t.Errorf("%s: from the node's network namespace to the echo Service's ClusterIP %s: %v %q", p.node, clusterIP, err, out)
			}
			if out, err := kd("exec", p.name, "--", "kiln-echo", "get", "http://echo.default.svc.cluster.local/"); err != nil || !strings.Contains(out, "echo-") {
				t.Errorf("%s: from the node's network namespace to the echo Service by DNS name: %v %q", p.node, err, out)
			}
		}
	})

	t.Run("kubectl top", func(t *testing.T) {
		checkMetrics(t, k, []string{vmcluster.MasterName, "kiln-worker-1"}, readyAt)
	})
	t.Run("admission webhook behind a Service", func(t *testing.T) {
		checkWebhook(t, mustKT(t), k)
	})

	// Pods on the master pull from the host's test registries; it runs
	// before the worker's runtime is killed and the worker rebooted, and
	// leaves the worker alone.
	t.Run("registry pulls", func(t *testing.T) {
		checkRegistryPulls(t, k, c, filepath.Join(dir, "cluster"), reg)
	})

	// A volume of the default StorageClass on the worker's state disk,
	// written now, read after the worker's reboot below.
	var volumeText string
	t.Run("volume on the worker's state disk", func(t *testing.T) {
		volumeText = checkVolumeWrite(t, mustKT(t), k)
	})
	t.Run("claim on a diskless node", func(t *testing.T) {
		checkDisklessClaim(t, mustKT(t), k)
	})
	t.Run("node operations by name from the host", func(t *testing.T) {
		checkNodeOperations(t, c, filepath.Join(dir, "cluster"), stateDir)
	})

	// Kill -9 containerd, then the kubelet, on the worker (from the debug
	// pod there): both restart, the pods keep running.
	killer := debugOn["kiln-worker-1"]
	wcon := c.Node("kiln-worker-1").VM()
	for _, comp := range []string{"containerd", "kubelet"} {
		// kubectl exec needs the kubelet and containerd: after the first
		// kill, retry until they are back and the second one lands.
		killed := regexp.MustCompile(`kiln: \[\s*[\d.]+s\] ` + comp + ` exited: signal: killed`)
		testutil.Eventually(t, 5*time.Minute, 0, "worker console shows "+comp+" killed", func() error {
			out, err := kd("exec", killer, "--", "kiln-echo", "pkill", "component "+comp+" ")
			t.Logf("kill %s: %v %s", comp, err, out)
			_, err = wcon.ExpectRegexp(ctx, killed, 20*time.Second)
			return err
		})
	}
	waitNodes(t, ctx, c, 10*time.Minute)
	after := waitPods(t, k, "app=echo", 2, 10*time.Minute)
	t.Logf("after the kills: %+v", after)
	// The node may still show Ready while its kubelet restarts: retry
	// until exec (kubelet and containerd both back) answers.
	var svcOut string
	testutil.Eventually(t, 5*time.Minute, 5*time.Second, "exec and the Service after the kills", func() error {
		var err error
		svcOut, err = k("exec", after[0].name, "--", "kiln-echo", "get", "http://echo.default.svc.cluster.local/")
		return err
	})
	if !strings.Contains(svcOut, "echo-") {
		t.Errorf("Service after the kills: %q", svcOut)
	}

	// Reboot the worker from the host, by name (kiln reboot, relayed by
	// the master): it rejoins under its name (a new boot ID on the same
	// Node), no CSR approved by hand.
	bootID := func() string {
		out, _ := k("get", "node", "kiln-worker-1", "-o", "jsonpath={.status.nodeInfo.bootID}")
		return out
	}
	before := bootID()
	rebootStart := time.Now()
	if out, err := e2e.Kiln("reboot", "--node", "kiln-worker-1", "--cluster", filepath.Join(dir, "cluster"), "--state", stateDir); err != nil {
		t.Fatalf("kiln reboot --node kiln-worker-1: %v\n%s", err, out)
	}
	testutil.Eventually(t, 15*time.Minute, 5*time.Second, "kiln-worker-1 back with a new boot ID (was "+before+")",
		testutil.Until("a new boot ID", func() bool { id := bootID(); return id != "" && id != before }))
	waitNodes(t, ctx, c, 10*time.Minute)
	waitPods(t, k, "app=echo", 2, 10*time.Minute)
	t.Logf("FIGURE cluster: worker reboot (kiln reboot --node) to Ready again with its pod Running: %s", time.Since(rebootStart).Round(time.Second))
	t.Run("volume after the worker's reboot", func(t *testing.T) {
		if volumeText == "" {
			t.Fatal("nothing was written to the volume before the reboot (see the subtest above)")
		}
		checkVolumeAfterReboot(t, mustKT(t), k, volumeText)
	})
	csrs := mustK("get", "csr", "-o", `jsonpath={range .items[*]}{.spec.username} {.status.conditions[*].type}{"\n"}{end}`)
	for _, l := range strings.Split(csrs, "\n") {
		if l != "" && !strings.Contains(l, "Approved") {
			t.Errorf("CSR not approved automatically: %q", l)
		}
	}

	// A worker whose image has the wrong token, then a machine with the
	// right token that claims kiln-worker-1's name (its own node secret):
	// each refused, each says why on its console, and the cluster is not
	// disturbed. One at a time, each powered off once refused: under TCG
	// two more guests booting at once starve the master for minutes.
	badNode, err := c.AddWorker(badImage, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := badNode.VM().Expect(ctx, "refused bootstrap token zzzzzz", 10*time.Minute); err != nil {
		t.Errorf("wrong token not reported on the console: %v", err)
	}
	badNode.VM().Kill()
	impostor, err := c.AddWorker(worker, "kiln-worker-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := impostor.VM().Expect(ctx, "the cluster refused node name kiln-worker-1: node name kiln-worker-1 is held by another machine", 10*time.Minute); err != nil {
		t.Errorf("a second machine under kiln-worker-1's name: refusal not on its console: %v", err)
	}
	// They retry forever: power off, then the cluster is still whole. A
	// node's Ready may lag a heartbeat under TCG: a few minutes, not one.
	impostor.VM().Kill()
	if out := mustK("get", "nodes", "-o", "name"); strings.Contains(out, badNode.Name) || strings.Contains(out, impostor.Name) {
		t.Errorf("a refused machine is a node: %s", out)
	}
	waitNodes(t, ctx, c, 5*time.Minute, vmcluster.MasterName, "kiln-worker-1")
	if out := mustK("get", "node", "kiln-worker-1", "-o", "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}"); out != c.Node("kiln-worker-1").Address {
		t.Errorf("kiln-worker-1's address is %q after the impostor, want %s", out, c.Node("kiln-worker-1").Address)
	}
}

const echoManifest = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      tolerations: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: echo}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: echo
        image: kiln.local/kiln-echo:v1
        imagePullPolicy: Never
        readinessProbe: {httpGet: {path: /, port: 8080}, timeoutSeconds: 10}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
`

// debugManifest is a debug pod on every node, in a namespace that Pod
// Security lets run privileged pods: it sees the node's processes
// (hostPID), may signal them, and reads the node's logs.
const debugManifest = `
apiVersion: v1
kind: Namespace
metadata:
  name: kiln-debug
  labels: {pod-security.kubernetes.io/enforce: privileged}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: debug, namespace: kiln-debug}
spec:
  selector: {matchLabels: {app: debug}}
  template:
    metadata: {labels: {app: debug}}
    spec:
      hostPID: true
      tolerations: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]
      containers:
      - name: debug
        image: kiln.local/kiln-echo:v1
        imagePullPolicy: Never
        securityContext: {privileged: true}
        volumeMounts: [{name: log, mountPath: /node-log, readOnly: true}]
      volumes:
      - name: log
        hostPath: {path: /var/lib/kiln/log}
`

// hostNetManifest is a pod in the node's network namespace on every node
// (Pod Security lets kiln-debug run it). It resolves names with the
// cluster DNS (ClusterFirstWithHostNet); its server listens on loopback,
// on a port of its own, so it takes nothing of the node's.
const hostNetManifest = `
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: hostnet, namespace: kiln-debug}
spec:
  selector: {matchLabels: {app: hostnet}}
  template:
    metadata: {labels: {app: hostnet}}
    spec:
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      tolerations: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]
      containers:
      - name: client
        image: kiln.local/kiln-echo:v1
        imagePullPolicy: Never
        args: [serve, -listen, "127.0.0.1:18080"]
`

// privilegedPod is what Pod Security's baseline level refuses in default.
const privilegedPod = `
apiVersion: v1
kind: Pod
metadata: {name: privileged}
spec:
  containers:
  - name: c
    image: kiln.local/kiln-echo:v1
    imagePullPolicy: Never
    securityContext: {privileged: true}
`

// denyEcho selects the echo pods and allows them no ingress; allowEcho
// allows them ingress from each other.
const denyEcho = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-echo}
spec:
  podSelector: {matchLabels: {app: echo}}
  policyTypes: [Ingress]
`

const allowEcho = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-echo}
spec:
  podSelector: {matchLabels: {app: echo}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: echo}}}]
`

// appArmorPod asks for the runtime's AppArmor profile, on the worker.
const appArmorPod = `
apiVersion: v1
kind: Pod
metadata: {name: apparmor}
spec:
  nodeSelector: {kubernetes.io/hostname: kiln-worker-1}
  securityContext:
    appArmorProfile: {type: RuntimeDefault}
  containers:
  - name: c
    image: kiln.local/kiln-echo:v1
    imagePullPolicy: Never
    args: [serve]
`

// rogueNode is a Node no kubelet runs: its status says its kubelet is the
// master's etcd port.
const rogueNode = `
apiVersion: v1
kind: Node
metadata: {name: rogue}
`

// listeners returns the local addresses bound in LISTEN state to port in
// a /proc/net/tcp table (IPv4, little-endian hex).
func listeners(table string, port int) []string {
	var out []string
	for _, l := range strings.Split(table, "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 4 || f[3] != "0A" {
			continue
		}
		host, p, ok := strings.Cut(f[1], ":")
		if v, err := strconv.ParseUint(p, 16, 16); !ok || err != nil || int(v) != port || len(host) != 8 {
			continue
		}
		b, err := hex.DecodeString(host)
		if err != nil {
			continue
		}
		out = append(out, net.IPv4(b[3], b[2], b[1], b[0]).String())
	}
	return out
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}
