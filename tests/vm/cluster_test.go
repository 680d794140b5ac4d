//go:build vm

package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/qemu/vmcluster"
)

// TestCluster is the product's promise: a master and a worker booted from
// their images on a private L2 form a cluster; workloads spread over both
// nodes, talk across them and find each other by DNS; the worker survives
// its runtime and kubelet being killed and a reboot; a worker with a wrong
// token is refused without disturbing anything. One cluster serves every
// step: under TCG each boot costs minutes.
func TestCluster(t *testing.T) {
	dir := t.TempDir()
	genCluster(t, dir)
	master := buildImage(t, dir, "master")
	worker := buildImage(t, dir, "worker")

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := vmcluster.Up(ctx, vmcluster.Options{
		MasterImage: master, WorkerImage: worker, ClusterDir: filepath.Join(dir, "cluster"),
		StateDir: filepath.Join(dir, "vms"), Workers: 1, Progress: testLog{t}, Append: vmAppend(),
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
	waitNodes(t, ctx, c, 20*time.Minute)
	t.Logf("FIGURE cluster: QEMU start to both nodes Ready: %s", time.Since(start).Round(time.Second))

	kc := kubectl(c.Kubeconfig, fmt.Sprintf("https://127.0.0.1:%d", c.APIPort))
	k := kc.Run
	mustK := func(args ...string) string {
		t.Helper()
		return kc.Must(t, args...)
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

	// Kill -9 containerd, then the kubelet, on the worker (from a hostPID
	// pod there): both restart, the pods keep running.
	apply(t, mustK, killerManifest)
	waitPods(t, k, "app=killer", 1, 5*time.Minute)
	killer := mustK("get", "pod", "-l", "app=killer", "-o", "jsonpath={.items[0].metadata.name}")
	wcon := c.Node("kiln-worker-1").VM()
	for _, comp := range []string{"containerd", "kubelet"} {
		// kubectl exec needs the kubelet and containerd: after the first
		// kill, retry until they are back and the second one lands.
		killed := regexp.MustCompile(`kiln: \[\s*[\d.]+s\] ` + comp + ` exited: signal: killed`)
		testutil.Eventually(t, 5*time.Minute, 0, "worker console shows "+comp+" killed", func() error {
			out, err := k("exec", killer, "--", "kiln-echo", "pkill", "component "+comp+" ")
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

	// Reboot the worker: it rejoins under its name (a new boot ID on the
	// same Node), no CSR approved by hand.
	bootID := func() string {
		out, _ := k("get", "node", "kiln-worker-1", "-o", "jsonpath={.status.nodeInfo.bootID}")
		return out
	}
	before := bootID()
	rebootStart := time.Now()
	if err := c.Restart(ctx, "kiln-worker-1", false); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Minute, 5*time.Second, "kiln-worker-1 back with a new boot ID (was "+before+")",
		testutil.Until("a new boot ID", func() bool { id := bootID(); return id != "" && id != before }))
	waitNodes(t, ctx, c, 10*time.Minute)
	waitPods(t, k, "app=echo", 2, 10*time.Minute)
	t.Logf("FIGURE cluster: worker reboot (ACPI power-off, boot) to Ready again with its pod Running: %s", time.Since(rebootStart).Round(time.Second))
	csrs := mustK("get", "csr", "-o", `jsonpath={range .items[*]}{.spec.username} {.status.conditions[*].type}{"\n"}{end}`)
	for _, l := range strings.Split(csrs, "\n") {
		if l != "" && !strings.Contains(l, "Approved") {
			t.Errorf("CSR not approved automatically: %q", l)
		}
	}

	// A worker whose image has the wrong token: refused, says so, and the
	// cluster is not disturbed.
	bad := filepath.Join(dir, "badtoken")
	if err := os.CopyFS(bad, os.DirFS(filepath.Join(dir, "cluster"))); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(bad, "secrets", "bootstrap-token"), []byte("zzzzzz.0123456789abcdef\n"), 0o600)
	badImage := filepath.Join(dir, "worker-badtoken")
	e2e.MustKiln(t, "build", "--role", "worker", "--node-binary", e2e.Bin(e2e.KilnNodeBin), "--cluster", bad, "--format", "kernel", "--out", badImage)
	n, err := c.AddWorker(badImage)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.VM().Expect(ctx, "refused bootstrap token zzzzzz", 10*time.Minute); err != nil {
		t.Fatalf("wrong token not reported on the console: %v", err)
	}
	if out := mustK("get", "nodes", "-o", "name"); strings.Contains(out, n.Name) {
		t.Errorf("the refused worker is a node: %s", out)
	}
	waitNodes(t, ctx, c, time.Minute, vmcluster.MasterName, "kiln-worker-1")
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

// killerManifest is a debug pod on the worker that sees the node's
// processes (hostPID) and may signal them.
const killerManifest = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: killer}
spec:
  replicas: 1
  selector: {matchLabels: {app: killer}}
  template:
    metadata: {labels: {app: killer}}
    spec:
      hostPID: true
      nodeSelector: {kubernetes.io/hostname: kiln-worker-1}
      containers:
      - name: killer
        image: kiln.local/kiln-echo:v1
        imagePullPolicy: Never
        securityContext: {privileged: true}
`
