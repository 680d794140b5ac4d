package boot

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln/configs/image"
	"kiln/images/initramfs"
	"kiln/images/kernel"
	"kiln/qemu"
)

// The VM tests boot the test init (testdata/testinit: boot.PID1 with an up
// function that reports what it got) under QEMU, TCG without /dev/kvm.

// vmModules are the modules the test image loads: the virtio devices and
// the ACPI power button.
var vmModules = []string{"virtio_pci", "virtio_net", "virtio_blk", "button", "evdev"}

const (
	goodConfig = "apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: worker\n"
	diskConfig = "storage:\n  stateDisk: /dev/vda\n  format: auto\n"
	badConfig  = "role: worker\nrloe: master\n"
)

var vmImage struct {
	once    sync.Once
	vmlinuz string
	initrd  string
	err     error
}

// testImage builds the kernel + initramfs once per test binary.
func testImage(t *testing.T) (vmlinuz, initrd string) {
	t.Helper()
	if err := qemu.Available(); err != nil {
		t.Skipf("VM test skipped: %v", err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("VM test skipped: qemu-system-x86_64 is not installed (scripts/install-deps.sh)")
	}
	if testing.Short() {
		t.Skip("VM test skipped with -short")
	}
	vmImage.once.Do(func() {
		start := time.Now()
		vmImage.vmlinuz, vmImage.initrd, vmImage.err = buildTestImage()
		t.Logf("test image built in %v", time.Since(start).Round(time.Millisecond))
	})
	if vmImage.err != nil {
		t.Fatal(vmImage.err)
	}
	return vmImage.vmlinuz, vmImage.initrd
}

var imageDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "kiln-boot-test-")
	if err != nil {
		panic(err)
	}
	imageDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

func buildTestImage() (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	k, err := kernel.Fetch(ctx, kernel.Options{Flavour: kernel.Cloud}) // no Progress: silent
	if err != nil {
		return "", "", err
	}
	bin := filepath.Join(imageDir, "testinit")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "kiln/init/boot/testdata/testinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("building the test init: %v\n%s", err, out)
	}

	a := initramfs.New()
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "etc", "etc/kiln", "var", "var/lib", "usr/sbin"} {
		a.Dir(d, 0o755)
	}
	a.AddDevConsole()
	a.FileFrom("init", bin, 0o755)
	mods, err := k.ModuleClosure(vmModules...)
	if err != nil {
		return "", "", err
	}
	modDir := path.Join("lib/modules", k.Release)
	var names []string
	for _, rel := range mods {
		a.FileFrom(path.Join(modDir, rel), filepath.Join(k.ModulesDir, filepath.FromSlash(rel)), 0o644)
		names = append(names, kernel.ModuleName(rel))
	}
	index, err := k.ModuleIndexFiles()
	if err != nil {
		return "", "", err
	}
	for _, f := range index {
		a.FileFrom(path.Join(modDir, f), filepath.Join(k.ModulesDir, f), 0o644)
	}
	a.File("etc/kiln/modules", []byte(strings.Join(names, "\n")+"\n"), 0o644)
	for _, tool := range []string{"mke2fs", "e2fsck"} {
		host := "/usr/sbin/" + tool
		if _, err := os.Stat(host); err != nil {
			host = "/sbin/" + tool
		}
		if err := a.AddHostBinary(host, "/usr/sbin/"+tool); err != nil {
			return "", "", fmt.Errorf("%s (install e2fsprogs): %w", tool, err)
		}
	}
	a.File("etc/kiln/config.yaml", []byte(goodConfig), 0o644)
	a.File("etc/kiln/disk.yaml", []byte(diskConfig), 0o644)
	a.File("etc/kiln/bad.yaml", []byte(badConfig), 0o644)
	initrd := filepath.Join(imageDir, "initramfs.img")
	if _, _, err := initramfs.WriteZstd(initrd, a); err != nil {
		return "", "", err
	}
	return k.Vmlinuz, initrd, nil
}

// bootVM starts a VM on the test image; it is killed when the test ends.
func bootVM(t *testing.T, ctx context.Context, opts ...qemu.Option) *qemu.VM {
	t.Helper()
	vmlinuz, initrd := testImage(t)
	serial := filepath.Join(t.TempDir(), "serial.log")
	all := append([]qemu.Option{qemu.WithKernel(vmlinuz), qemu.WithInitramfs(initrd), qemu.WithMemory(512),
		qemu.WithSerialLog(serial)}, opts...)
	vm, err := qemu.Start(ctx, all...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		switch {
		case t.Failed():
			t.Logf("qemu: %s\nserial console:\n%s", vm.CommandLine(), vm.Console().Output())
		case testing.Verbose():
			// PID 1's own lines, for the boot timeline.
			var lines []string
			for _, l := range vm.Console().Lines() {
				if strings.HasPrefix(l, "kiln") {
					lines = append(lines, l)
				}
			}
			t.Logf("console (kiln lines):\n%s", strings.Join(lines, "\n"))
		}
	})
	return vm
}

// expect waits for each substring in turn.
func expect(t *testing.T, ctx context.Context, vm *qemu.VM, timeout time.Duration, substrs ...string) {
	t.Helper()
	for _, s := range substrs {
		if _, err := vm.Expect(ctx, s, timeout); err != nil {
			t.Fatalf("waiting for %q: %v", s, err)
		}
	}
}

var stageLine = regexp.MustCompile(`kiln: \[\s*([0-9.]+)s\] (\S+) done`)

// stageTimes returns the "<step> done" lines' times, in console order.
func stageTimes(out string) (names []string, times []float64) {
	for _, m := range stageLine.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		names = append(names, m[2])
		times = append(times, v)
	}
	return names, times
}

// TestVMBootDHCPAndPowerButton boots diskless with DHCP on QEMU's user
// network, checks each step and what up gets, then presses the ACPI power
// button and expects a clean power-off.
func TestVMBootDHCPAndPowerButton(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	vm := bootVM(t, ctx, qemu.WithUserNet(), qemu.WithAppend(image.Arg(image.ParamBoot, image.BootKernel)))
	expect(t, ctx, vm, 90*time.Second,
		"booted from kernel",
		"cgroups: cpuset cpu io memory hugetlb pids for /sys/fs/cgroup/kiln",
		"mounts done",
		"reaper started",
		"modules done",
		"power button started",
		"config: role worker from /etc/kiln/config.yaml",
		"config done",
		// QEMU's DHCP server sends no router and no DNS server with
		// restrict=on.
		"network: eth0 10.0.2.15/24 (dhcp from 10.0.2.2, lease 24h0m0s)",
		"network done",
		"dhcp started",
		"hostname: kiln-123456 (from the first NIC's MAC address)",
		"hostname done",
		"storage: diskless",
		"storage done",
		"kiln-test: up called role=worker data=/var/lib/kiln host=kiln-123456 address=10.0.2.15",
	)
	upAt := time.Since(start)
	expect(t, ctx, vm, 60*time.Second,
		"kiln-test: kiln subtree_control: cpuset cpu io memory hugetlb pids",
		"kiln-test: pid 1 cgroup: 0::/kiln/init",
		"kiln-test: cgroup child ok, its controllers: cpuset cpu io memory hugetlb pids",
		"kiln-test: kubepods controllers: cpuset cpu io memory hugetlb pids",
		"kiln-test: marker written",
		"kiln-test: exec exit codes 5/5 ok",
		"kiln-test: zombies left: 0",
	)
	line := regexp.MustCompile(`kiln-test: cgroup.controllers: .*`).FindString(vm.Console().Output())
	for _, c := range []string{"cpu", "memory", "io", "pids"} {
		if !regexp.MustCompile(`\b` + c + `\b`).MatchString(line) {
			t.Errorf("%q lacks %s", line, c)
		}
	}
	names, times := stageTimes(vm.Console().Output())
	want := []string{"mounts", "modules", "config", "network", "hostname", "storage"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("steps in order %v, want %v", names, want)
	}
	for i := 1; i < len(times); i++ {
		if times[i] < times[i-1] {
			t.Errorf("step times go back: %v", times)
		}
	}

	downStart := time.Now()
	sctx, scancel := context.WithTimeout(ctx, 60*time.Second)
	defer scancel()
	if err := vm.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if err := vm.Wait(); err != nil {
		t.Fatalf("after power-off: %v", err)
	}
	out := vm.Console().Output()
	for _, s := range []string{"power off requested (power button)", "kiln-test: up stopping", "; power off"} {
		if !strings.Contains(out, s) {
			t.Errorf("console lacks %q", s)
		}
	}
	t.Logf("up called %v after QEMU started; steps done at %v s (since kernel start); powered off %v after the button",
		upAt.Round(100*time.Millisecond), times, time.Since(downStart).Round(100*time.Millisecond))
}

// TestVMStateDisk formats a blank disk on the first boot, and finds the
// marker written then on the second, after a hard kill.
func TestVMStateDisk(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	testImage(t)
	disk := filepath.Join(t.TempDir(), "state.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "1G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	cmdline := qemu.WithAppend(image.Arg(image.ParamConfig, "/etc/kiln/disk.yaml"))

	// A config drive for the second boot: ext4 labelled KILN-CONFIG.
	driveDir := t.TempDir()
	os.WriteFile(filepath.Join(driveDir, "config.yaml"), []byte("hostname: from-drive\n"), 0o644)
	configDrive := filepath.Join(t.TempDir(), "config.img")
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-L", image.ConfigDriveLabel, "-d", driveDir, configDrive, "4M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs config drive: %v: %s", err, out)
	}

	start := time.Now()
	vm := bootVM(t, ctx, qemu.WithDisk(disk, "qcow2"), cmdline)
	expect(t, ctx, vm, 90*time.Second,
		"config: role worker from /etc/kiln/config.yaml, kiln.config=/etc/kiln/disk.yaml",
		"storage: /dev/vda is blank: formatting it (ext4, label kiln-state)",
		"storage: /dev/vda formatted in",
		"storage done",
		"kiln-test: up called role=worker data=/var/lib/kiln",
		"kiln-test: marker written",
	)
	first := time.Since(start)
	vm.Kill()

	start = time.Now()
	vm = bootVM(t, ctx, qemu.WithDisk(disk, "qcow2"), qemu.WithDisk(configDrive, "raw"), cmdline)
	expect(t, ctx, vm, 90*time.Second,
		"config: role worker from /etc/kiln/config.yaml, config drive /dev/vdb/config.yaml, kiln.config=/etc/kiln/disk.yaml",
		"hostname: from-drive (from the config)",
		"storage: /dev/vda mounted on /var/lib",
		"storage done",
		"kiln-test: up called role=worker data=/var/lib/kiln host=from-drive",
		"kiln-test: marker found: written at boot kiln",
	)
	out := vm.Console().Output()
	if strings.Contains(out, "formatting") {
		t.Error("the second boot formatted the disk again")
	}
	// No kiln.boot= on this command line: nothing said about it.
	if strings.Contains(out, "booted from") {
		t.Error("a boot method reported without kiln.boot=")
	}
	t.Logf("first boot (format) to marker: %v; second boot to marker: %v",
		first.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
}

// TestVMBadConfig boots with a malformed config: the FATAL line names the
// source and the field, the kernel does not panic, the VM stays up and
// still powers off on the button.
func TestVMBadConfig(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	vm := bootVM(t, ctx, qemu.WithAppend(image.Arg(image.ParamConfig, "/etc/kiln/bad.yaml")))
	want := `kiln: FATAL: config kiln.config=/etc/kiln/bad.yaml: line 2: unknown field "rloe"`
	expect(t, ctx, vm, 90*time.Second, want)
	fatalAt := time.Since(start)
	select {
	case <-vm.Done():
		t.Fatalf("the VM exited after the fatal error: %v", vm.Wait())
	case <-time.After(20 * time.Second):
	}
	if err := vm.Console().Failure(); err != nil {
		t.Fatalf("console: %v", err)
	}
	if strings.Contains(vm.Console().Output(), "up called") {
		t.Error("up was called with a bad config")
	}
	// Ctrl-alt-del: the kernel sends SIGINT to PID 1, which reboots
	// (and -no-reboot makes QEMU exit).
	keys := map[string]any{"keys": []map[string]string{
		{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}}
	if _, err := vm.QMP(ctx, "send-key", keys); err != nil {
		t.Fatal(err)
	}
	expect(t, ctx, vm, 30*time.Second, "reboot requested (SIGINT (ctrl-alt-del))", "; reboot")
	select {
	case <-vm.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("QEMU did not exit after the reboot")
	}
	if err := vm.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("FATAL line %v after QEMU started; still up 20 s later; rebooted on ctrl-alt-del", fatalAt.Round(100*time.Millisecond))
}
