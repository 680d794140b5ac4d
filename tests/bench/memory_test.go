//go:build bench

package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/qemu"
)

// The two views of a node's memory the report prints side by side:
//
//   - kiln's: each component's cgroup (memory.current: its processes and
//     what they started there, page cache included) and the machine's
//     /proc/meminfo, as kiln's node status serves them (kiln status
//     --node, the MEMORY column);
//   - the kubelet's: its summary API's node working set (memory in use
//     minus inactive file cache), what `kubectl top node` shows.

// summaryMemory is the node part of the kubelet's summary API.
type summaryMemory struct {
	WorkingSetBytes uint64 `json:"workingSetBytes"`
	AvailableBytes  uint64 `json:"availableBytes"`
	UsageBytes      uint64 `json:"usageBytes"`
	RSSBytes        uint64 `json:"rssBytes"`
}

func kubeletSummary(ctx context.Context, api *apiClient, node string) (summaryMemory, error) {
	var sum struct {
		Node struct {
			Memory summaryMemory `json:"memory"`
		} `json:"node"`
	}
	err := api.getJSON(ctx, "/api/v1/nodes/"+node+"/proxy/stats/summary", &sum)
	return sum.Node.Memory, err
}

// kilnMemory is one node's memory as kiln accounts it.
type kilnMemory struct {
	Components []componentMemory
	Total      uint64 // /proc/meminfo MemTotal
	Available  uint64 // MemAvailable
	Source     string // how it was read
}

type componentMemory struct {
	Name  string
	Bytes uint64
	Note  string // "task, done", "not read: ..."
}

func fromStatus(st nodeapi.Status, source string) kilnMemory {
	m := kilnMemory{Source: source}
	for _, s := range st.Services {
		c := componentMemory{Name: s.Name, Bytes: s.MemoryBytes}
		if s.PID == 0 {
			c.Note = string(s.State) + ", no process"
		}
		m.Components = append(m.Components, c)
	}
	if st.Memory != nil {
		m.Total, m.Available = st.Memory.TotalBytes, st.Memory.AvailableBytes
	}
	return m
}

// statusViaForward reads kiln's status of a VM node through its user-mode
// NIC: it adds a forward, 127.0.0.1:free port → the node's address, port
// nodeapi.Port, to the running QEMU (the monitor's hostfwd_add on the
// user netdev, restrict=on as every user netdev here) and runs `kiln status
// --node` on it. Only a VM with a user-mode NIC can be read this way
// (vmcluster's master has one, for the API; its workers do not).
func statusViaForward(ctx context.Context, vm *qemu.VM, guestAddr, clusterDir string) (nodeapi.Status, error) {
	var st nodeapi.Status
	id := userNetdev(vm.Args())
	if id == "" {
		return st, errors.New("the VM has no user-mode NIC to forward a port through")
	}
	port, err := freePort()
	if err != nil {
		return st, err
	}
	cmd := fmt.Sprintf("hostfwd_add %s tcp:127.0.0.1:%d-%s:%d", id, port, guestAddr, nodeapi.Port)
	out, err := vm.QMP(ctx, "human-monitor-command", map[string]string{"command-line": cmd})
	if err != nil {
		return st, fmt.Errorf("%s: %w", cmd, err)
	}
	var msg string
	if json.Unmarshal(out, &msg) == nil && strings.TrimSpace(msg) != "" {
		return st, fmt.Errorf("%s: %s", cmd, strings.TrimSpace(msg))
	}
	var lastErr error
	for i := 0; i < 3; i++ {
		var stdout, stderr strings.Builder
		c := exec.CommandContext(ctx, e2e.Bin(e2e.KilnBin), "status", "--node", fmt.Sprintf("127.0.0.1:%d", port), "--cluster", clusterDir, "-o", "json")
		c.Stdout, c.Stderr = &stdout, &stderr
		if lastErr = c.Run(); lastErr == nil {
			if lastErr = json.Unmarshal([]byte(stdout.String()), &st); lastErr == nil {
				return st, nil
			}
		} else {
			lastErr = fmt.Errorf("kiln status --node 127.0.0.1:%d (forwarded to %s:%d): %v: %s", port, guestAddr, nodeapi.Port, lastErr, strings.TrimSpace(stderr.String()))
		}
		time.Sleep(2 * time.Second)
	}
	return st, lastErr
}

// userNetdev finds the id of a VM's user-mode netdev in its QEMU command
// line ("-netdev user,id=net1,restrict=on,...").
func userNetdev(args []string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] != "-netdev" || !strings.HasPrefix(args[i+1], "user,") {
			continue
		}
		for _, kv := range strings.Split(args[i+1], ",") {
			if v, ok := strings.CutPrefix(kv, "id="); ok {
				return v
			}
		}
	}
	return ""
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// The same figures read on the node itself, for a node whose status port
// the host cannot reach (a vmcluster worker is only on the cluster's L2):
// a pod on that node (kube-system, which Pod Security exempts) with the
// node's cgroup tree mounted read-only reads each component's
// memory.current and /proc/meminfo with `kiln-echo cat`. The pod's own
// containerd shim is charged to containerd's cgroup, so containerd's
// figure includes it.
const memPodManifest = `apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: kube-system
  labels: {app: kiln-bench-memory}
spec:
  nodeName: %[2]s
  tolerations: [{operator: Exists}]
  containers:
  - name: cat
    image: kiln.local/kiln-echo:v1
    imagePullPolicy: Never
    args: [serve]
    resources: {requests: {cpu: 1m, memory: 4Mi}}
    volumeMounts: [{name: cgroup, mountPath: /host-cgroup, readOnly: true}]
  volumes:
  - name: cgroup
    hostPath: {path: /sys/fs/cgroup, type: Directory}
`

func memoryViaPod(t testingT, k e2e.Kubectl, node string, con *consoleClock) (kilnMemory, error) {
	m := kilnMemory{Source: "kiln's cgroups, read by a pod"}
	names, root := componentNames(con)
	if len(names) == 0 {
		return m, errors.New("no component names on the console (no \"NAME ready\" or \"NAME done\" lines)")
	}
	pod := "kiln-bench-memory-" + node
	f := filepath.Join(t.TempDir(), pod+".yaml")
	if err := os.WriteFile(f, []byte(fmt.Sprintf(memPodManifest, pod, node)), 0o644); err != nil {
		return m, err
	}
	if _, err := k.Run("apply", "-f", f); err != nil {
		return m, err
	}
	defer k.Run("-n", "kube-system", "delete", "pod", pod, "--wait=false")
	err := testutil.WaitUntil(4*time.Minute, 2*time.Second, func() error {
		out, err := k.Run("-n", "kube-system", "get", "pod", pod, "-o", "jsonpath={.status.phase}")
		if err == nil && out != "Running" {
			err = fmt.Errorf("pod %s is %q", pod, out)
		}
		return err
	})
	if err != nil {
		return m, err
	}
	cat := func(p string) (string, error) {
		return k.Run("-n", "kube-system", "exec", pod, "--", "kiln-echo", "cat", p)
	}
	rel := strings.TrimPrefix(root, "/sys/fs/cgroup")
	for _, n := range names {
		c := componentMemory{Name: n.name}
		out, err := cat("/host-cgroup" + rel + "/" + n.name + "/memory.current")
		v, perr := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
		switch {
		case err == nil && perr == nil:
			c.Bytes = v
			if n.task {
				c.Note = "task, done"
			}
		case n.task:
			c.Note = "task, done: no cgroup left"
		default:
			c.Note = "not read (" + shorten(fmt.Sprint(err), 60) + ")"
		}
		m.Components = append(m.Components, c)
	}
	if out, err := cat("/proc/meminfo"); err == nil {
		m.Total, m.Available = meminfo(out)
	}
	return m, nil
}

// testingT is what memoryViaPod needs of a test.
type testingT interface{ TempDir() string }

// componentNames reads a node's components from its console: the bring-up
// prints "NAME ready" for a service and "NAME done" for a task. root is
// the node's cgroup root for them, from PID 1's "cgroups: ... for ROOT and
// its children" line (/sys/fs/cgroup/kiln when absent).
func componentNames(con *consoleClock) (names []component, root string) {
	root = "/sys/fs/cgroup/kiln"
	readyRE := regexp.MustCompile(`^([a-z0-9][a-z0-9-]*) (ready|done)$`)
	rootRE := regexp.MustCompile(`^cgroups: .* for (/\S+) and its children`)
	seen := map[string]bool{}
	for _, l := range con.Lines() {
		_, _, msg, ok := stageLine(l.Text)
		if !ok {
			continue
		}
		if m := rootRE.FindStringSubmatch(msg); m != nil {
			root = m[1]
		}
		if m := readyRE.FindStringSubmatch(msg); m != nil && !seen[m[1]] && !isBootStep(m[1]) {
			seen[m[1]] = true
			names = append(names, component{m[1], m[2] == "done"})
		}
	}
	return names, root
}

type component struct {
	name string
	task bool
}

// isBootStep: PID 1's own steps print "NAME done (1.23s)", never a bare
// "NAME done", but be safe with the few names a boot step has.
func isBootStep(name string) bool {
	switch name {
	case "mounts", "modules", "config", "network", "hostname", "storage", "root":
		return true
	}
	return false
}

// meminfo returns MemTotal and MemAvailable in bytes (0 when absent).
func meminfo(s string) (total, avail uint64) {
	if m := nodeapi.ParseMeminfo(s); m != nil {
		return m.TotalBytes, m.AvailableBytes
	}
	return 0, 0
}

func mib(b uint64) string { return fmt.Sprintf("%d", b>>20) }

// memoryRows are the report's rows for one node: kiln's view, then the
// kubelet's.
func memoryRows(node string, km *kilnMemory, kmErr error, sum *summaryMemory, sumErr error) [][]string {
	var rows [][]string
	kilnSrc, kubeletSrc := "kiln", "kubelet summary API"
	if km != nil && km.Source != "" {
		kilnSrc = km.Source
	}
	if kmErr != nil {
		rows = append(rows, []string{node, "components", "n/a", kilnSrc + ": " + shorten(kmErr.Error(), 120)})
	}
	if km != nil {
		var total uint64
		for _, c := range km.Components {
			total += c.Bytes
			v, note := mib(c.Bytes), "cgroup memory.current"
			if c.Bytes == 0 {
				v = "-"
			}
			if c.Note != "" {
				note += "; " + c.Note
			}
			rows = append(rows, []string{node, c.Name, v, kilnSrc + ": " + note})
		}
		rows = append(rows, []string{node, "all components (sum)", mib(total), kilnSrc + ": sum of the cgroups above"})
		if km.Total > 0 {
			rows = append(rows, []string{node, "machine in use (MemTotal − MemAvailable)", mib(km.Total - min(km.Available, km.Total)), kilnSrc + ": /proc/meminfo"})
			rows = append(rows, []string{node, "machine MemTotal", mib(km.Total), kilnSrc + ": /proc/meminfo"})
		}
	}
	if sumErr != nil {
		rows = append(rows, []string{node, "node working set", "n/a", kubeletSrc + ": " + shorten(sumErr.Error(), 120)})
	} else if sum != nil {
		rows = append(rows, []string{node, "node working set", mib(sum.WorkingSetBytes), kubeletSrc + ": node.memory.workingSetBytes"})
		rows = append(rows, []string{node, "node usage (incl. page cache)", mib(sum.UsageBytes), kubeletSrc + ": node.memory.usageBytes"})
		rows = append(rows, []string{node, "node available", mib(sum.AvailableBytes), kubeletSrc + ": node.memory.availableBytes"})
	}
	return rows
}
