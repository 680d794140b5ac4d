//go:build bench

package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"kiln/configs/node"
	"kiln/images/builder"
	"kiln/internal/testutil/e2e"
	"kiln/qemu"
	"kiln/qemu/vmcluster"
)

var vm = flag.Bool("vm", true, "also boot a master and a worker in QEMU (what make cluster boots) and measure them")

// TestBenchVM measures the images users boot: each format's file sizes,
// then a master booted alone and, once it is Ready, a worker (what `make
// cluster` boots, one after the other so that each boot is measured
// without the other's load): each node's boot timeline from QEMU start,
// and each node's memory once idle, as kiln and as the kubelet account
// it. Nothing is asserted on time.
func TestBenchVM(t *testing.T) {
	if !*vm {
		t.Skip("-vm=false")
	}
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	clusterDir := e2e.GenCluster(t, dir, e2e.Cluster{})

	// Images: every format, so that every size is measured; the VMs boot
	// the kernel format.
	images := map[string]string{}
	sizes := table{rank: rankImages, Title: "Image sizes (kiln build, every format, the default master and worker)",
		Header: []string{"role", "format", "files", "MB"}}
	for _, role := range []string{"master", "worker"} {
		out := filepath.Join(dir, role)
		start := time.Now()
		e2e.MustKiln(t, "build", "--role", role, "--node-binary", e2e.Bin(e2e.KilnNodeBin), "--cluster", clusterDir, "--out", out)
		took := time.Since(start)
		images[role] = out
		rows, err := imageSizes(out)
		if err != nil {
			t.Fatal(err)
		}
		sizes.Rows = append(sizes.Rows, rows...)
		sizes.Rows = append(sizes.Rows, []string{role, "(kiln build, all formats, warm cache)", fmt.Sprintf("took %.1f s", took.Seconds()), ""})
	}
	addTable(sizes)

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	c, err := vmcluster.Up(ctx, vmcluster.Options{MasterImage: images["master"], WorkerImage: images["worker"],
		ClusterDir: clusterDir, StateDir: filepath.Join(dir, "vms"), Workers: 0, Progress: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	master := c.Node(vmcluster.MasterName)
	cons := map[string]*consoleClock{master.Name: follow(master.VM())}
	api, err := newAPIClient(c.Kubeconfig)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	w := newWatcher(api)
	wctx, stopWatch := context.WithCancel(ctx)
	go w.run(wctx)
	// The timelines are recorded even when the test fails half-way; the
	// VMs are powered off after.
	var worker *vmcluster.Node
	defer func() {
		stopWatch()
		for _, n := range []*vmcluster.Node{master, worker} {
			if n != nil {
				recordTimeline(n, cons[n.Name], w)
			}
		}
		if err := c.Close(); err != nil {
			t.Logf("powering off: %v", err)
		}
	}()

	readyCtx, readyCancel := context.WithTimeout(ctx, 15*time.Minute)
	err = c.WaitReady(readyCtx, master.Name)
	readyCancel()
	if err != nil {
		t.Fatalf("%v\n%s console (tail):\n%s", err, master.Name, master.VM().Console().Tail(40))
	}
	// The poll that saw it Ready may be a second behind WaitReady's.
	w.waitEvent(ctx, evReady(master.Name), 10*time.Second)

	worker, err = c.AddWorker(images["worker"], "")
	if err != nil {
		t.Fatal(err)
	}
	cons[worker.Name] = follow(worker.VM())
	readyCtx, readyCancel = context.WithTimeout(ctx, 15*time.Minute)
	err = c.WaitReady(readyCtx, worker.Name)
	readyCancel()
	if err != nil {
		t.Fatalf("%v\n%s console (tail):\n%s", err, worker.Name, worker.VM().Console().Tail(40))
	}
	w.waitEvent(ctx, evReady(worker.Name), 10*time.Second)
	if _, err := w.waitEvent(ctx, evCoreDNS, 5*time.Minute); err != nil {
		t.Errorf("CoreDNS: %v", err)
	}
	stopWatch()

	// Memory, once idle: the kubelet's summaries first (the pod that
	// reads a worker's cgroups is not running yet), then kiln's.
	t.Logf("idling %s before reading memory", *idle)
	time.Sleep(*idle)
	nodes := []*vmcluster.Node{master, worker}
	sums := map[string]summaryMemory{}
	sumErrs := map[string]error{}
	for _, n := range nodes {
		sums[n.Name], sumErrs[n.Name] = kubeletSummary(ctx, api, n.Name)
	}
	mem := table{rank: rankMemory, Title: fmt.Sprintf("Idle memory of the VM nodes, %s after both were Ready (MiB)", *idle),
		Header: []string{"node", "component / what", "MiB", "source"},
		Notes: []string{
			"kiln: each component's cgroup memory.current (its processes and what they started there, page cache included) and /proc/meminfo: the MEMORY column of `kiln status --node`.",
			"  The master's is read with `kiln status --node` through a port forward added to its user-mode NIC (QEMU monitor hostfwd_add); a worker has no such NIC, so a pod on it reads the same cgroup files (containerd's figure then includes that pod's shim).",
			"kubelet summary API: /api/v1/nodes/NAME/proxy/stats/summary, node.memory: workingSetBytes (what `kubectl top node` shows), usageBytes, availableBytes.",
		}}
	k := e2e.Kubectl{Kubeconfig: c.Kubeconfig, Flags: []string{"--request-timeout=50s"}}
	for _, n := range nodes {
		var km kilnMemory
		st, err := statusViaForward(ctx, n.VM(), n.Address, clusterDir)
		if err == nil {
			km = fromStatus(st, "kiln status --node")
		} else {
			t.Logf("%s: kiln status through a forward: %v; reading its cgroups with a pod", n.Name, err)
			km, err = memoryViaPod(t, k, n.Name, cons[n.Name])
			if err != nil {
				t.Errorf("%s: memory via a pod: %v", n.Name, err)
			}
		}
		sum := sums[n.Name]
		var kmp *kilnMemory
		if len(km.Components) > 0 || km.Total > 0 {
			kmp = &km
		}
		mem.Rows = append(mem.Rows, memoryRows(fmt.Sprintf("%s (%d MiB)", n.Name, memoryOf(n.Role)), kmp, err, &sum, sumErrs[n.Name])...)
	}
	addTable(mem)
}

// recordTimeline adds a node's boot timeline to the report and its figures
// to the comparison with the floors.
func recordTimeline(n *vmcluster.Node, con *consoleClock, w *watcher) {
	vm := n.VM()
	if vm == nil || con == nil {
		return
	}
	start := vm.StartTime()
	rows, f := consoleTimeline(start, con.Lines())
	rows = append(rows, timelineRow{0, -1, "QEMU started", "host"})
	fig := nodeFigures{Name: n.Name, Role: string(n.Role), bootFigures: f, UpToAPI: -1}
	if e, ok := w.get(evRegistered(n.Name)); ok {
		rows = append(rows, apiRows(start, e, "node registered", "Node creationTimestamp")...)
	}
	if e, ok := w.get(evReady(n.Name)); ok {
		rows = append(rows, apiRows(start, e, "node Ready", "Ready lastTransitionTime")...)
		fig.Ready = e.Seen.Sub(start)
	}
	if n.Role == node.RoleMaster {
		if e, ok := w.get(evReadyz); ok {
			rows = append(rows, apiRows(start, e, "API /readyz ok from the host", "")...)
			fig.APIReadyz = e.Seen.Sub(start)
		}
		if e, ok := w.get(evCoreDNS); ok {
			rows = append(rows, apiRows(start, e, "CoreDNS pod Running", "container startedAt")...)
		}
		up := f.guestStage(func(m string) bool { return strings.HasPrefix(m, "up: ") })
		api := f.guestStage(func(m string) bool { return m == "kube-apiserver ready" })
		if up >= 0 && api >= up {
			fig.UpToAPI = api - up
		}
	}
	sortRows(rows)
	accel := "TCG"
	if vm.KVM() {
		accel = "KVM"
	}
	t := table{rank: rankTimeline, Title: fmt.Sprintf("Boot timeline of %s (%s, %d MiB, %s)", n.Name, n.Role, memoryOf(n.Role), accel),
		Header: []string{"since QEMU start", "guest clock", "stage", "time from"},
		Notes:  []string{"since QEMU start: when the host saw it (console line arrival, or the API poll); guest clock: the line's own stamp (kernel uptime)."}}
	if n.Role == node.RoleWorker {
		t.Notes = append(t.Notes, "The worker was started once the master was Ready.")
	}
	for _, r := range rows {
		at, g := "n/a", ""
		if r.At >= 0 {
			at = fmt.Sprintf("%.2f", r.At.Seconds())
		}
		if r.Guest >= 0 {
			g = fmt.Sprintf("%.2f", r.Guest)
		}
		t.Rows = append(t.Rows, []string{at, g, r.What, r.From})
	}
	addTable(t)
	report.mu.Lock()
	report.nodes = append(report.nodes, fig)
	report.mu.Unlock()
}

// imageSizes are the size rows of one image directory: each format's files
// as its manifest lists them (read through builder.Open, so no file name
// is typed here), and the initramfs unpacked, which the manifest records.
func imageSizes(dir string) ([][]string, error) {
	d, err := builder.Open(dir)
	if err != nil {
		return nil, err
	}
	role := string(d.Role)
	byFormat := map[string][]builder.Artifact{}
	order := builder.FormatNames()
	for _, a := range d.Artifacts {
		if !slices.Contains(order, a.Format) {
			order = append(order, a.Format)
		}
		byFormat[a.Format] = append(byFormat[a.Format], a)
	}
	var rows [][]string
	for _, f := range order {
		arts := byFormat[f]
		if len(arts) == 0 {
			continue
		}
		var files []string
		var total int64
		for _, a := range arts {
			size := a.Size
			if fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(a.Path))); err == nil {
				size = fi.Size()
			}
			total += size
			files = append(files, path.Base(a.Path)+" "+sizeString(size))
		}
		rows = append(rows, []string{role, f, strings.Join(files, " + "), fmt.Sprintf("%.1f", float64(total)/1e6)})
	}
	// The sizes the manifest records besides the files (the initramfs
	// unpacked, and whatever else a newer builder adds): its integer
	// fields whose JSON name ends in "Bytes".
	mv := reflect.ValueOf(d.Manifest)
	for i := 0; i < mv.NumField(); i++ {
		f := mv.Type().Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !strings.HasSuffix(name, "Bytes") || !mv.Field(i).CanInt() || mv.Field(i).Int() <= 0 {
			continue
		}
		what := "manifest " + name
		if f.Name == "InitramfsRaw" {
			what += ": the initramfs unpacked, in the guest's RAM"
		}
		rows = append(rows, []string{role, "(recorded size)", what, fmt.Sprintf("%.1f", float64(mv.Field(i).Int())/1e6)})
	}
	return rows, nil
}

// sizeString is a file size in MB, or kB below 0.1 MB.
func sizeString(n int64) string {
	if n < 100_000 {
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

// memoryOf is the guest memory vmcluster gives a role, for the labels.
func memoryOf(role node.Role) int {
	if role == node.RoleMaster {
		return vmcluster.DefaultMasterMemory
	}
	return vmcluster.DefaultWorkerMemory
}

// testLog sends progress lines to t.Log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
