//go:build bench

package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln/images/builder"
	"kiln/internal/testutil/e2e"
	"kiln/qemu"
	"kiln/qemu/vmcluster"
)

var floorRuns = flag.Int("floor-runs", 3, "how many times the kernel floor boots")

// TestBenchFloor measures the floors the boot figures are compared with, in
// the same run, because the machine is shared and its speed varies:
//
//   - kernel: the image's kernel and command line booting a trivial init
//     (the image builder's test init, the initramfs' /init) to its first
//     console line, in QEMU as vmcluster runs it (same accelerator, CPUs
//     and memory as a worker, one NIC on user networking with
//     restrict=on, no disk);
//   - host: the control plane started bare on this host (kiln-node up:
//     etcd, then kube-apiserver) to /readyz, first start on an empty data
//     directory. TestBench measures it when it ran; alone, this test does.
func TestBenchFloor(t *testing.T) {
	t.Run("kernel", kernelFloor)
	t.Run("host", hostFloor)
}

func kernelFloor(t *testing.T) {
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	initBin := filepath.Join(dir, "testinit")
	// As images/builder's tests build it.
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", initBin, "../../images/builder/testdata/testinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build testinit: %v\n%s", err, out)
	}
	clusterDir := e2e.GenCluster(t, dir, e2e.Cluster{Name: "floor"})
	// A master that runs no pods needs none of the worker stack's
	// programs beside the node binary.
	cfg := filepath.Join(dir, "floor.yaml")
	if err := os.WriteFile(cfg, []byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: master\nrunPods: false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "floor")
	// The trivial init is the initramfs' /init too (where kiln-init, stage
	// 1, would mount the root image): the kernel runs it straight away.
	e2e.MustKiln(t, "build", "--role", "master", "--node-binary", initBin, "--init-binary", initBin, "--cluster", clusterDir,
		"--config", cfg, "--format", "kernel", "--out", out)
	d, err := builder.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	k, err := d.Kernel()
	if err != nil {
		t.Fatal(err)
	}
	var fl floorFigures
	rows := [][]string{}
	kvm := false
	for i := 0; i < *floorRuns; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		vm, err := qemu.Start(ctx, qemu.WithKernel(k.Vmlinuz), qemu.WithInitramfs(k.Initramfs),
			qemu.WithAppend(strings.Fields(k.Cmdline)...),
			qemu.WithMemory(vmcluster.DefaultWorkerMemory), qemu.WithCPUs(2),
			// A NIC as the nodes have (its option ROM is part of the
			// firmware's time); user networking, restrict=on.
			qemu.WithUserNet())
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		kvm = vm.KVM()
		con := follow(vm)
		_, err = vm.Expect(ctx, "kiln-test-init: ", 150*time.Second)
		initLine, ok := con.waitFor(func(s string) bool { return strings.Contains(s, "kiln-test-init: ") }, 5*time.Second)
		kernLine, kok := con.waitFor(func(s string) bool { _, _, ok := kernelLine(s); return ok }, time.Second)
		vm.Kill()
		cancel()
		if err != nil || !ok || !kok {
			t.Fatalf("boot %d: %v (init line seen %v, kernel line seen %v)\nconsole (tail):\n%s", i+1, err, ok, kok, vm.Console().Tail(30))
		}
		kf, inf := kernLine.At.Sub(vm.StartTime()), initLine.At.Sub(vm.StartTime())
		fl.KernelFirst = append(fl.KernelFirst, kf)
		fl.InitFirst = append(fl.InitFirst, inf)
		rows = append(rows, []string{fmt.Sprintf("kernel floor, boot %d", i+1), fmt.Sprintf("%.2f", kf.Seconds()), fmt.Sprintf("%.2f", inf.Seconds())})
		t.Logf("boot %d: kernel's first line after %v, the init's after %v", i+1, kf.Round(10*time.Millisecond), inf.Round(10*time.Millisecond))
	}
	accel := "TCG"
	if kvm {
		accel = "KVM"
	}
	fl.VMNote = fmt.Sprintf("%s, %d MiB, 2 vCPUs, one NIC (user networking, restrict=on), no disk; initramfs %.1f MB",
		accel, vmcluster.DefaultWorkerMemory, float64(fileSize(k.Initramfs))/1e6)
	rows = append(rows, []string{"kernel floor, median", fmt.Sprintf("%.2f", median(fl.KernelFirst).Seconds()), fmt.Sprintf("%.2f", median(fl.InitFirst).Seconds())})
	addTable(table{rank: rankFloor, Title: "Kernel floor: the same kernel booting a trivial init (s since QEMU start)",
		Notes:  []string{"The image's kernel and command line, /init the image builder's test init, " + fl.VMNote + "."},
		Header: []string{"run", "kernel's first console line", "the init's first line"},
		Rows:   rows})
	report.mu.Lock()
	report.floor.KernelFirst, report.floor.InitFirst, report.floor.VMNote = fl.KernelFirst, fl.InitFirst, fl.VMNote
	report.mu.Unlock()
}

func hostFloor(t *testing.T) {
	report.mu.Lock()
	have := report.floor.HostReadyz > 0
	report.mu.Unlock()
	if have {
		t.Log("the host floor is TestBench's first kiln-node up → /readyz")
		return
	}
	h := startHost(t, 1)
	defer h.stop()
	setHostFloor(h.times[0])
	addTable(table{rank: rankFloor, Title: "Host floor: the control plane started bare on this host",
		Header: []string{"what", "s"},
		Rows:   [][]string{{"kiln-node up (host mode) → /readyz ok, first start on empty data", fmt.Sprintf("%.2f", h.times[0].Seconds())}}})
}

func setHostFloor(d time.Duration) {
	report.mu.Lock()
	defer report.mu.Unlock()
	report.floor.HostReadyz = d
	report.floor.HostNote = fmt.Sprintf("kiln-node up on this host (host mode: etcd, then kube-apiserver; no VM) → /readyz ok, first start on an empty data directory: %.1f s", d.Seconds())
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}
