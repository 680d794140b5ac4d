//go:build bench

// Package bench measures what users judge kiln by: binary and image sizes,
// how long a node takes to boot and where the time goes, and each
// component's memory once idle, with floors measured in the same run to
// compare with (the machine is shared and noisy). `make bench` runs it;
// every test adds tables to one report that TestMain prints at the end.
// Nothing here asserts on time or size.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
)

var (
	runs = flag.Int("runs", 3, "how many times to measure up → /readyz")
	idle = flag.Duration("idle", time.Minute, "how long nodes idle before memory is read")
)

func TestMain(m *testing.M) {
	report.started, report.load0 = time.Now(), loadavg()
	code := m.Run()
	printReport(os.Stdout)
	os.Exit(code)
}

const (
	address = "127.0.0.3"
	apiPort = 26443
)

// TestBench measures the host side: binary sizes, `kiln-node up` (host
// mode) to a ready API, first start and restarts on the same data, and
// each component's memory once idle.
func TestBench(t *testing.T) {
	// kiln, kiln-node and kubectl first, then whatever else make build
	// put in bin/ (runc, the shim, ...).
	bins := table{rank: rankHost, Title: "Binaries", Header: []string{"binary", "MB"}}
	binDir := filepath.Dir(e2e.Bin(e2e.KilnBin))
	names := []string{e2e.KilnBin, e2e.KilnNodeBin, e2e.KubectlBin}
	if ents, err := os.ReadDir(binDir); err == nil {
		for _, e := range ents {
			if e.Type().IsRegular() && !slices.Contains(names, e.Name()) {
				names = append(names, e.Name())
			}
		}
	}
	for _, b := range names {
		if fi, err := os.Stat(filepath.Join(binDir, b)); err == nil {
			bins.Rows = append(bins.Rows, []string{"bin/" + b, fmt.Sprintf("%.1f", float64(fi.Size())/1e6)})
		}
	}
	addTable(bins)

	h := startHost(t, *runs)
	defer h.stop()
	setHostFloor(h.times[0])
	up := table{rank: rankHost, Title: "Host mode: kiln-node up → /readyz ok (etcd, kube-apiserver, ... as processes on " + address + ")",
		Header: []string{"start", "s"}}
	for i, d := range h.times {
		what := "first start, empty data directory (the host floor)"
		if i > 0 {
			what = fmt.Sprintf("restart %d on the same data", i)
		}
		up.Rows = append(up.Rows, []string{what, fmt.Sprintf("%.2f", d.Seconds())})
	}
	addTable(up)

	time.Sleep(*idle)
	out, err := exec.Command(e2e.Bin(e2e.KilnNodeBin), "status", "--data-dir", h.dataDir, "-o", "json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var st nodeapi.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	mem := table{rank: rankMemory, Title: fmt.Sprintf("Idle memory in host mode, after %s (MiB)", *idle),
		Header: []string{"component", "RSS", "cgroup"},
		Notes:  []string{"RSS: the process's VmRSS; cgroup: memory.current, kiln status's MEMORY (when the supervisor runs the components in cgroups)."}}
	var rss, cg uint64
	for _, s := range st.Services {
		if s.PID == 0 {
			continue // a task that is done (addons)
		}
		kb := rssKB(s.PID)
		rss += kb << 10
		cg += s.MemoryBytes
		mem.Rows = append(mem.Rows, []string{s.Name, mib(kb << 10), mib(s.MemoryBytes)})
	}
	mem.Rows = append(mem.Rows, []string{"all components", mib(rss), mib(cg)})
	if cg == 0 {
		// No cgroups here: leave the column out.
		mem.Header = mem.Header[:2]
		mem.Notes = []string{"RSS: the process's VmRSS (kiln-node up runs the components without cgroups here)."}
		for i := range mem.Rows {
			mem.Rows[i] = mem.Rows[i][:2]
		}
	}
	addTable(mem)
}

// hostNode is a master started by `kiln-node up` on this host, restarted
// on the same data as many times as asked.
type hostNode struct {
	times   []time.Duration // up → /readyz ok, each start
	dataDir string
	last    *exec.Cmd
}

func (h *hostNode) stop() {
	if h.last != nil {
		h.last.Process.Signal(syscall.SIGTERM)
		h.last.Wait()
		h.last = nil
	}
}

// startHost starts a host-mode master n times on the same data directory
// (stopping the one before), measuring each start to /readyz ok, and
// leaves the last one running.
func startHost(t *testing.T, n int) *hostNode {
	t.Helper()
	dir := t.TempDir()
	clusterDir := e2e.GenCluster(t, dir, e2e.Cluster{Endpoint: fmt.Sprintf("%s:%d", address, apiPort)})
	// /readyz is polled over one kept-alive connection: a kubectl
	// process every 50 ms would take a core from what is measured.
	api, err := newAPIClient(filepath.Join(clusterDir, "admin.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	api.http.Timeout = 5 * time.Second
	cfg := filepath.Join(dir, "node.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`apiVersion: kiln.dev/v1alpha1
kind: NodeConfig
hostname: bench
address: %s
ports: {apiServer: %d, etcdClient: 22379, etcdPeer: 22380, controllerManager: 30257, scheduler: 30259}
`, address, apiPort)), 0o644)

	h := &hostNode{dataDir: filepath.Join(dir, "data")}
	t.Cleanup(h.stop)
	for i := 0; i < max(n, 1); i++ {
		h.stop()
		start := time.Now()
		cmd := exec.Command(e2e.Bin(e2e.KilnNodeBin), "up", "--cluster", clusterDir, "--data-dir", h.dataDir, "--config", cfg, "-q")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		h.last = cmd
		testutil.Eventually(t, 3*time.Minute, 50*time.Millisecond, "/readyz ok", func() error {
			out, err := api.get(context.Background(), "/readyz")
			if err == nil && string(out) != "ok" {
				err = fmt.Errorf("readyz: %q", out)
			}
			return err
		})
		h.times = append(h.times, time.Since(start))
		t.Logf("start %d: up → /readyz ok in %v", i+1, h.times[i].Round(10*time.Millisecond))
	}
	return h
}

// rssKB reads VmRSS of a process, in KiB.
func rssKB(pid int) uint64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if f := strings.Fields(s.Text()); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb
		}
	}
	return 0
}
