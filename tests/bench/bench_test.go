//go:build bench

// Package bench measures what users judge kiln by: binary sizes, time from
// `kiln-node up` to a ready API, and each component's memory once idle.
// `make bench` runs it and prints a table; nothing here asserts on time.
package bench

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	idle = flag.Duration("idle", time.Minute, "how long the master idles before memory is read")
)

const (
	address = "127.0.0.3"
	apiPort = 26443
)

func TestBench(t *testing.T) {
	var rows [][2]string
	add := func(k, v string) { rows = append(rows, [2]string{k, v}); t.Logf("%s: %s", k, v) }
	for _, b := range []string{e2e.KilnBin, e2e.KilnNodeBin, e2e.KubectlBin} {
		if fi, err := os.Stat(e2e.Bin(b)); err == nil {
			add("size of bin/"+b, fmt.Sprintf("%.1f MB", float64(fi.Size())/1e6))
		}
	}

	dir := t.TempDir()
	clusterDir := e2e.GenCluster(t, dir, e2e.Cluster{Endpoint: fmt.Sprintf("%s:%d", address, apiPort)})
	kubectl := e2e.Kubectl{Kubeconfig: filepath.Join(clusterDir, "admin.kubeconfig")}
	cfg := filepath.Join(dir, "node.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`apiVersion: kiln.dev/v1alpha1
kind: NodeConfig
hostname: bench
address: %s
ports: {apiServer: %d, etcdClient: 22379, etcdPeer: 22380, controllerManager: 30257, scheduler: 30259}
`, address, apiPort)), 0o644)

	var times []time.Duration
	var last *exec.Cmd
	dataDir := filepath.Join(dir, "data")
	for i := 0; i < *runs; i++ {
		if last != nil {
			last.Process.Signal(syscall.SIGTERM)
			last.Wait()
		}
		start := time.Now()
		cmd := exec.Command(e2e.Bin(e2e.KilnNodeBin), "up", "--cluster", clusterDir, "--data-dir", dataDir, "--config", cfg, "-q")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		last = cmd
		testutil.Eventually(t, 3*time.Minute, 50*time.Millisecond, "/readyz ok", func() error {
			out, err := kubectl.Run("get", "--raw", "/readyz")
			if err == nil && out != "ok" {
				err = fmt.Errorf("readyz: %q", out)
			}
			return err
		})
		times = append(times, time.Since(start))
	}
	defer func() { last.Process.Signal(syscall.SIGTERM); last.Wait() }()
	label := "up → /readyz ok (first boot, then restarts on the same data)"
	var parts []string
	for _, d := range times {
		parts = append(parts, d.Round(10*time.Millisecond).String())
	}
	add(label, strings.Join(parts, ", "))

	time.Sleep(*idle)
	out, err := exec.Command(e2e.Bin(e2e.KilnNodeBin), "status", "--data-dir", dataDir, "-o", "json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var st nodeapi.Status
	json.Unmarshal(out, &st)
	total := 0
	for _, s := range st.Services {
		if s.PID == 0 {
			continue // a task that is done (addons)
		}
		kb := rssKB(s.PID)
		total += kb
		add(fmt.Sprintf("RSS of %s after %s idle", s.Name, *idle), fmt.Sprintf("%d MB", kb/1024))
	}
	add("RSS of the master, all components", fmt.Sprintf("%d MB", total/1024))

	fmt.Println("\n| what | figure |\n|---|---|")
	for _, r := range rows {
		fmt.Printf("| %s | %s |\n", r[0], r[1])
	}
}

// rssKB reads VmRSS of a process.
func rssKB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if f := strings.Fields(s.Text()); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb
		}
	}
	return 0
}
