//go:build vm

// Package vm is the third test tier: images built by `kiln build`, booted in
// QEMU (TCG here: no KVM), driven from the host through forwarded ports.
// Each scenario is slow, so there are few and each proves something a user
// relies on. Run with `make test-vm`.
package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/qemu"
)

// TestMasterImage boots the master image with -kernel/-initrd and uses its
// API from the host, then powers it off with the ACPI power button.
func TestMasterImage(t *testing.T) {
	dir := t.TempDir()
	genCluster(t, dir)
	image := buildControlPlane(t, dir)

	start := time.Now()
	vm := bootKernel(t, image, nil,
		qemu.WithMemory(2048), qemu.WithCPUs(2),
		qemu.WithUserNet(qemu.Forward{GuestPort: 6443}, qemu.Forward{GuestPort: 10260}))
	server := fmt.Sprintf("https://127.0.0.1:%d", vm.HostPort(6443))
	kc := filepath.Join(dir, "cluster", "admin.kubeconfig")

	// The boot stages, in order.
	for _, stage := range []string{"mounts done", "modules done", "config done", "network done", "storage done",
		"etcd ready", "kube-apiserver ready", "kube-controller-manager ready", "kube-scheduler ready", "master ready"} {
		line := expect(t, vm, "] "+stage, 6*time.Minute)
		t.Logf("figure: %-30s console %s, host %s", stage, strings.TrimSpace(line[:strings.Index(line, "]")+1]), time.Since(start).Round(100*time.Millisecond))
	}
	cg := vm.Console().Output()
	i := strings.Index(cg, "cgroups: ")
	if i < 0 {
		t.Fatal("no cgroups line on the console")
	}
	cgLine := cg[i : i+strings.Index(cg[i:], "\n")]
	for _, c := range []string{"cpu", "memory", "io", "pids"} {
		if !strings.Contains(" "+cgLine+" ", " "+c+" ") {
			t.Errorf("cgroup controller %s not enabled: %s", c, cgLine)
		}
	}

	waitReadyz(t, kc, server)
	t.Logf("figure: QEMU start to /readyz ok from the host: %s", time.Since(start).Round(100*time.Millisecond))
	if out, err := kubectl(kc, server).Run("get", "--raw", "/version"); err != nil || !strings.Contains(out, `"gitVersion": "v1.37.`) {
		t.Fatalf("/version: %v %s", err, out)
	}
	if out, err := kubectl(kc, server).Run("create", "configmap", "vm-test", "--from-literal=a=b"); err != nil {
		t.Fatalf("create configmap: %v %s", err, out)
	}
	// The node's status from the host: every component ready, each one's
	// memory from its cgroup (the memory controller is delegated), and
	// the guest's memory in use.
	out, err := e2e.Kiln("status", "--node", fmt.Sprintf("127.0.0.1:%d", vm.HostPort(10260)),
		"--cluster", filepath.Join(dir, "cluster"), "-o", "json")
	if err != nil {
		t.Fatalf("kiln status --node: %v\n%s", err, out)
	}
	var st nodeapi.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("kiln status -o json: %v\n%s", err, out)
	}
	var comps []string
	for _, c := range st.Services {
		comps = append(comps, fmt.Sprintf("%s %d MiB", c.Name, c.MemoryBytes>>20))
		if c.State != nodeapi.StateReady && c.State != nodeapi.StateDone {
			t.Errorf("%s is %s", c.Name, c.State)
		}
		if c.Name == "kube-apiserver" && c.MemoryBytes < 50<<20 {
			t.Errorf("kube-apiserver's cgroup memory: %d bytes", c.MemoryBytes)
		}
	}
	if st.Memory == nil || st.Memory.TotalBytes == 0 {
		t.Errorf("no machine memory in the status")
	} else {
		t.Logf("FIGURE master (2048 MiB guest, control plane only) just ready: %d MiB in use; %s",
			(st.Memory.TotalBytes-st.Memory.AvailableBytes)>>20, strings.Join(comps, ", "))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := vm.Shutdown(ctx); err != nil {
		t.Fatalf("power button: %v", err)
	}
	con := vm.Console().Output()
	for _, want := range []string{"power off requested", "all components stopped, in order: ", "reboot: Power down"} {
		if !strings.Contains(con, want) {
			t.Errorf("console lacks %q after the power button", want)
		}
	}
	if strings.Contains(con, "Kernel panic") {
		t.Error("kernel panic on the console")
	}
}

// TestBadConfigReported: a malformed setting on the kernel command line is
// reported on the console, and the node stays up instead of panicking.
func TestBadConfigReported(t *testing.T) {
	dir := t.TempDir()
	genCluster(t, dir)
	image := buildControlPlane(t, dir)
	vm := bootKernel(t, image, []string{"kiln.role=boss"}, qemu.WithMemory(1024))
	line, err := vm.ExpectRegexp(context.Background(), regexp.MustCompile(`kiln: FATAL: .*boss`), 3*time.Minute)
	if err != nil {
		t.Fatalf("no FATAL line naming the bad value: %v", err)
	}
	if !strings.Contains(line, "role") {
		t.Errorf("the error does not name the field: %s", line)
	}
	// The node stays up and says it again.
	testutil.Eventually(t, 2*time.Minute, time.Second, "the FATAL line repeated",
		testutil.Until("a second FATAL line", func() bool { return strings.Count(vm.Console().Output(), "kiln: FATAL: ") >= 2 }))
	select {
	case <-vm.Done():
		t.Fatal("the VM stopped after a config error")
	default:
	}
	if strings.Contains(vm.Console().Output(), "Kernel panic") {
		t.Fatal("kernel panic")
	}
	if err := vm.Console().Failure(); err != nil && !errors.Is(err, qemu.ErrExited) {
		t.Fatalf("console failure: %v", err)
	}
}

// TestQcow2StatePersists boots the qcow2 disk (BIOS, syslinux), writes a
// ConfigMap, powers the VM off hard, boots the same disk again: the cluster
// state lives on the disk's kiln-state partition and survives. The node
// booted a second time is then upgraded in place (upgradeScenarios).
func TestQcow2StatePersists(t *testing.T) {
	dir := t.TempDir()
	genCluster(t, dir)
	image := buildControlPlane(t, dir, "qcow2")
	disk := filepath.Join(image, "master.qcow2")
	kc := filepath.Join(dir, "cluster", "admin.kubeconfig")

	boot := func() (*qemu.VM, string) {
		vm, err := qemu.Start(context.Background(),
			qemu.WithDisk(disk, "qcow2"), qemu.WithMemory(2048), qemu.WithCPUs(2),
			// A reboot (kiln reboot, an upgrade's rollback) boots the
			// disk again, as a server's would.
			qemu.WithReboot(),
			qemu.WithUserNet(qemu.Forward{GuestPort: 6443}, qemu.Forward{GuestPort: nodeapi.Port}),
			qemu.WithSerialLog(filepath.Join(t.TempDir(), "console.log")))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			vm.Kill()
			if t.Failed() {
				t.Logf("console (tail):\n%s", vm.Console().Tail(120))
			}
		})
		// The console arrives in chunks: match the whole message, not its start.
		if _, err := vm.ExpectRegexp(context.Background(), regexp.MustCompile(`storage: /dev/vda2 mounted on /var/lib`), 3*time.Minute); err != nil {
			t.Fatalf("the state partition was not mounted: %v", err)
		}
		expect(t, vm, "] master ready", 6*time.Minute)
		return vm, fmt.Sprintf("https://127.0.0.1:%d", vm.HostPort(6443))
	}
	ready := func(server string) { waitReadyz(t, kc, server) }

	vm, server := boot()
	ready(server)
	if out, err := kubectl(kc, server).Run("create", "configmap", "survivor", "--from-literal=k=kept"); err != nil {
		t.Fatalf("create configmap: %v %s", err, out)
	}
	// Revoke the bootstrap token: its Secret, once the addons made it, is
	// deleted, and must stay deleted after the reboot (the addons run at
	// every boot but create it once in the cluster's life).
	tok, err := os.ReadFile(filepath.Join(dir, "cluster", "secrets", "bootstrap-token"))
	if err != nil {
		t.Fatal(err)
	}
	id, _, _ := strings.Cut(strings.TrimSpace(string(tok)), ".")
	tokenSecret := "secret/bootstrap-token-" + id
	testutil.Eventually(t, 3*time.Minute, 2*time.Second, "the addons create "+tokenSecret, func() error {
		_, err := kubectl(kc, server).Run("-n", "kube-system", "get", tokenSecret)
		return err
	})
	if out, err := kubectl(kc, server).Run("-n", "kube-system", "delete", tokenSecret); err != nil {
		t.Fatalf("delete %s: %v %s", tokenSecret, err, out)
	}
	// etcd has the write in its WAL (fsynced) once the API answered.
	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
	<-vm.Done()

	vm2, server2 := boot()
	ready(server2)
	out, err := kubectl(kc, server2).Run("get", "configmap", "survivor", "-o", "jsonpath={.data.k}")
	if err != nil || out != "kept" {
		t.Fatalf("after a hard power-off and reboot: %q %v", out, err)
	}
	if strings.Contains(vm2.Console().Output(), "mke2fs") {
		t.Error("the state partition was formatted again on the second boot")
	}
	testutil.Eventually(t, 5*time.Minute, 2*time.Second, "the addons done after the reboot", testutil.Until("addons done on the console", func() bool {
		return strings.Contains(vm2.Console().Output(), "] addons done")
	}))
	if out, err := kubectl(kc, server2).Run("-n", "kube-system", "get", tokenSecret); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("the revoked token came back after the master's reboot: %v %s", err, out)
	}
	upgradeScenarios(t, dir, vm2, kc, server2)
}

// TestBootMethods boots the same master image from its ISO (BIOS, isolinux)
// and over PXE (QEMU's iPXE ROM, QEMU's built-in TFTP): each reaches the
// kiln init and a control plane that answers the host.
func TestBootMethods(t *testing.T) {
	dir := t.TempDir()
	genCluster(t, dir)
	image := buildControlPlane(t, dir, "iso", "pxe")
	kc := filepath.Join(dir, "cluster", "admin.kubeconfig")
	api := qemu.Forward{GuestPort: 6443}
	for _, tc := range []struct {
		boot string
		opts []qemu.Option
	}{
		{"iso-bios", []qemu.Option{qemu.WithCDROM(filepath.Join(image, "master.iso")), qemu.WithBoot("d"), qemu.WithUserNet(api)}},
		{"pxe", []qemu.Option{qemu.WithBoot("n"), qemu.WithUserNetConfig(qemu.UserNet{
			Forwards: []qemu.Forward{api}, TFTPRoot: filepath.Join(image, "pxe"), BootFile: "boot.ipxe"})}},
	} {
		t.Run(tc.boot, func(t *testing.T) {
			start := time.Now()
			opts := append([]qemu.Option{qemu.WithMemory(2048), qemu.WithCPUs(2),
				qemu.WithSerialLog(filepath.Join(t.TempDir(), "console.log"))}, tc.opts...)
			vm, err := qemu.Start(context.Background(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Kill()
			defer func() {
				if t.Failed() {
					t.Logf("console (tail):\n%s", vm.Console().Tail(60))
				}
			}()
			expect(t, vm, "kiln.boot="+tc.boot, 3*time.Minute)
			expect(t, vm, "] mounts done", 3*time.Minute)
			t.Logf("figure: %s: QEMU start to kiln init: %s", tc.boot, time.Since(start).Round(100*time.Millisecond))
			expect(t, vm, "] kube-apiserver ready", 6*time.Minute)
			server := fmt.Sprintf("https://127.0.0.1:%d", vm.HostPort(6443))
			waitReadyz(t, kc, server)
			t.Logf("figure: %s: QEMU start to /readyz ok: %s", tc.boot, time.Since(start).Round(100*time.Millisecond))
		})
	}
}
