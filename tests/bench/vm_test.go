//go:build bench

package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"kiln/configs/node"
	"kiln/images/builder"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/qemu/vmcluster"
)

var vm = flag.Bool("vm", true, "also boot a master and a worker in QEMU (what make cluster boots) and measure them")

// TestBenchVM measures the images users boot: their sizes, QEMU start to
// each node Ready (under TCG here, without KVM), and each node's memory in
// use once idle (the kubelet's summary: the working set of the whole
// node). Nothing is asserted on time.
func TestBenchVM(t *testing.T) {
	if !*vm {
		t.Skip("-vm=false")
	}
	var rows [][2]string
	add := func(k, v string) { rows = append(rows, [2]string{k, v}); t.Logf("%s: %s", k, v) }
	dir := t.TempDir()
	clusterDir := e2e.GenCluster(t, dir, e2e.Cluster{})
	images := map[string]string{}
	for _, role := range []string{"master", "worker"} {
		out := filepath.Join(dir, role)
		start := time.Now()
		e2e.MustKiln(t, "build", "--role", role, "--node-binary", e2e.Bin(e2e.KilnNodeBin),
			"--cluster", clusterDir, "--format", "kernel", "--out", out)
		add("kiln build --role "+role+" --format kernel (warm)", time.Since(start).Round(100*time.Millisecond).String())
		images[role] = out
		m, err := builder.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		add(role+" image: vmlinuz / initramfs (zstd) / initramfs (raw)", fmt.Sprintf("%s / %s / %s",
			fileMB(filepath.Join(out, "vmlinuz")), fileMB(filepath.Join(out, "initramfs.img")), mb(m.InitramfsRaw)))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := vmcluster.Up(ctx, vmcluster.Options{MasterImage: images["master"], WorkerImage: images["worker"],
		ClusterDir: clusterDir, StateDir: filepath.Join(dir, "vms"), Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	readyAt := map[string]time.Duration{}
	deadline, _ := ctx.Deadline()
	testutil.Eventually(t, time.Until(deadline), time.Second, "nodes Ready", func() error {
		nodes, err := c.APINodes(ctx)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if _, seen := readyAt[n.Name]; n.Ready && !seen {
				readyAt[n.Name] = time.Since(start)
			}
		}
		if len(readyAt) < len(c.Nodes) {
			return fmt.Errorf("ready: %v", readyAt)
		}
		return nil
	})
	for _, n := range c.Nodes {
		add(fmt.Sprintf("QEMU start → %s Ready (%s, %d MiB, TCG)", n.Name, n.Role, memoryOf(n.Role)), readyAt[n.Name].Round(time.Second).String())
	}

	time.Sleep(*idle)
	for _, n := range c.Nodes {
		out, err := e2e.Kubectl{Kubeconfig: c.Kubeconfig}.Run("get", "--raw", "/api/v1/nodes/"+n.Name+"/proxy/stats/summary")
		if err != nil {
			t.Errorf("%s summary: %v", n.Name, err)
			continue
		}
		var sum struct {
			Node struct {
				Memory struct{ WorkingSetBytes uint64 } `json:"memory"`
			} `json:"node"`
		}
		if err := json.Unmarshal([]byte(out), &sum); err != nil {
			t.Errorf("%s summary: %v", n.Name, err)
			continue
		}
		add(fmt.Sprintf("%s memory in use (working set) after %s idle", n.Name, *idle), mb(int64(sum.Node.Memory.WorkingSetBytes)))
	}

	fmt.Println("\n| what | figure |\n|---|---|")
	for _, r := range rows {
		fmt.Printf("| %s | %s |\n", r[0], r[1])
	}
}

// memoryOf is the guest memory vmcluster gives a role, for the labels.
func memoryOf(role node.Role) int {
	if role == node.RoleMaster {
		return vmcluster.DefaultMasterMemory
	}
	return vmcluster.DefaultWorkerMemory
}

func fileMB(p string) string {
	fi, err := os.Stat(p)
	if err != nil {
		return "?"
	}
	return mb(fi.Size())
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
