package qemu

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln/images/initramfs"
	"kiln/images/kernel"
)

func TestBuildArgs(t *testing.T) {
	cfg := Config{Machine: "q35", MemoryMB: 256, CPUs: 2}
	for _, o := range []Option{
		WithKernel("/k"), WithInitramfs("/i"), WithAppend("kiln.role=worker"),
		WithUserNet(Forward{HostPort: 6443, GuestPort: 6443}, Forward{Proto: "udp", HostAddr: "127.0.0.2", HostPort: 5353, GuestPort: 53}),
		WithSocketNet("127.0.0.1:9000", "52:54:00:00:00:02"),
		WithTapNet("tap-w1", "52:54:00:00:00:03"),
		WithDisk("/d.qcow2", ""), WithCDROM("/c,d.iso"),
		WithDrive(Disk{Path: "/state.img", Cache: "unsafe"}),
	} {
		if err := o(&cfg); err != nil {
			t.Fatal(err)
		}
	}
	args, err := buildArgs(&cfg, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Join(args, " ")
	for _, want := range []string{
		"-nodefaults", "-no-reboot", "-display none", "-accel tcg -cpu max", "-m 256", "-smp 2",
		"-append console=ttyS0 panic=-1 kiln.role=worker",
		"-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:6443-:6443,hostfwd=udp:127.0.0.2:5353-:53",
		"-device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
		"-netdev stream,id=net1,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=9000",
		"-device virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02",
		"-netdev tap,id=net2,ifname=tap-w1,script=no,downscript=no",
		"-device virtio-net-pci,netdev=net2,mac=52:54:00:00:00:03",
		"file=/d.qcow2,format=qcow2,if=virtio",
		"file=/c,,d.iso,media=cdrom",
		"file=/state.img,format=raw,if=virtio,id=disk1,cache=unsafe",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("args lack %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "-netdev user") != strings.Count(s, "restrict=on") {
		t.Errorf("a user netdev without restrict=on:\n%s", s)
	}

	cfg = Config{Machine: "q35", MemoryMB: 256, CPUs: 1}
	WithAppend("console=hvc0", "panic=10")(&cfg)
	if got := kernelAppend(&cfg); got != "console=hvc0 panic=10" {
		t.Errorf("append with user console/panic = %q", got)
	}
	if err := WithSocketNet("nohostport", "")(&cfg); err == nil {
		t.Error("bad hub address accepted")
	}
	for _, bad := range []string{"", "tap,x", "a/b", "a-very-long-tap-name"} {
		if err := WithTapNet(bad, "")(&cfg); err == nil {
			t.Errorf("tap name %q accepted", bad)
		}
	}
	for _, bad := range []string{"", "../x", "a b"} {
		if err := WithNetNS(bad)(&cfg); err == nil {
			t.Errorf("namespace name %q accepted", bad)
		}
	}
	cfg.nics = nil
	WithSocketNet("127.0.0.1:1", "zz:zz")(&cfg)
	if _, err := buildArgs(&cfg, t.TempDir(), false); err == nil {
		t.Error("bad MAC accepted")
	}
	cfg = Config{Machine: "q35", MemoryMB: 256, CPUs: 1}
	WithExtraArgs("-nic", "user,model=virtio")(&cfg)
	if _, err := buildArgs(&cfg, t.TempDir(), false); err == nil {
		t.Error("unrestricted user networking accepted through WithExtraArgs")
	}
}

func TestConsoleExpect(t *testing.T) {
	c := newConsole(nil)
	go func() {
		for _, s := range []string{"Linux version 6.1\r\n", "one\r\ntw", "o\r\n", "login: "} {
			c.consume([]byte(s))
			time.Sleep(10 * time.Millisecond)
		}
	}()
	ctx := context.Background()
	if l, err := c.Expect(ctx, "two", time.Second); err != nil || l != "two" {
		t.Fatalf("Expect two = %q, %v", l, err)
	}
	// "one" came before the cursor: not seen again.
	if _, err := c.Expect(ctx, "one", 100*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("want ErrTimeout, got %v", err)
	}
	if l, err := c.Expect(ctx, "login:", time.Second); err != nil || l != "login: " {
		t.Fatalf("Expect prompt = %q, %v", l, err)
	}
	c.consume([]byte("[    1.0] Initramfs unpacking failed: write error\r\nlater\r\n"))
	if _, err := c.Expect(ctx, "later", time.Second); !errors.Is(err, ErrInitramfsUnpack) {
		t.Fatalf("want ErrInitramfsUnpack, got %v", err)
	}
	r := c.NewReader()
	c.close(nil)
	b, _ := io.ReadAll(r)
	if !strings.HasPrefix(string(b), "Linux version") || !strings.HasSuffix(string(b), "later\r\n") {
		t.Fatalf("reader got %q", b)
	}
	if _, err := c.Expect(ctx, "never", time.Second); !errors.Is(err, ErrExited) {
		t.Fatalf("want ErrExited, got %v", err)
	}
}

// ---- VM tests: they boot the pinned Debian cloud kernel under QEMU. ----

var (
	kernelOnce sync.Once
	testKernel *kernel.Kernel
	kernelErr  error
	initOnce   sync.Once
	initBin    string
	initErr    error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if initBin != "" {
		os.RemoveAll(filepath.Dir(initBin))
	}
	os.Exit(code)
}

func needVM(t *testing.T) *kernel.Kernel {
	t.Helper()
	if err := Available(); err != nil {
		t.Skip(err)
	}
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	kernelOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		testKernel, kernelErr = kernel.Fetch(ctx, kernel.Options{Flavour: kernel.Cloud, Progress: testLog{t}})
	})
	if kernelErr != nil {
		t.Fatalf("fetching the kernel: %v", kernelErr)
	}
	return testKernel
}

// testLog writes the kernel fetch's progress lines to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// tinyInit builds testdata/tinyinit as a static binary.
func tinyInit(t *testing.T) string {
	t.Helper()
	initOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-tinyinit-")
		if err != nil {
			initErr = err
			return
		}
		initBin = filepath.Join(dir, "init")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", initBin, "./testdata/tinyinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			initErr = errors.New("go build tinyinit: " + err.Error() + "\n" + string(out))
		}
	})
	if initErr != nil {
		t.Fatal(initErr)
	}
	return initBin
}

// tinyInitramfs writes a zstd initramfs with /init = tinyinit, plus extra.
func tinyInitramfs(t *testing.T, extra func(a *initramfs.Archive)) string {
	a := initramfs.New()
	a.FileFrom("/init", tinyInit(t), 0o755)
	a.AddDevConsole()
	a.Dir("/proc", 0o555)
	if extra != nil {
		extra(a)
	}
	p := filepath.Join(t.TempDir(), "initramfs.cpio.zst")
	raw, comp, err := initramfs.WriteZstd(p, a)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs: %d bytes raw, %d compressed", raw, comp)
	return p
}

func TestBootTinyInit(t *testing.T) {
	k := needVM(t)
	initrd := tinyInitramfs(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	serial := filepath.Join(t.TempDir(), "serial.log")
	start := time.Now()
	vm, err := Start(ctx,
		WithKernel(k.Vmlinuz), WithInitramfs(initrd),
		WithAppend("kiln.test=boot-42"),
		WithMemory(256), WithSerialLog(serial),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	t.Logf("KVM=%v: %s", vm.KVM(), vm.CommandLine())
	line, err := vm.Expect(ctx, "kiln-test-init: hello", 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	hello := time.Since(start)
	t.Logf("boot to /init: %s (%q)", hello.Round(time.Millisecond), line)
	line, err = vm.ExpectRegexp(ctx, regexp.MustCompile(`kiln-test-init: cmdline: .*\bkiln\.test=boot-42\b`), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, "console=ttyS0") {
		t.Errorf("default console= missing from %q", line)
	}
	// The guest powers itself off: QEMU must exit on its own.
	select {
	case <-vm.Done():
	case <-time.After(2 * time.Minute):
		t.Fatalf("VM did not power off; console:\n%s", vm.Console().Tail(20))
	}
	if err := vm.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU start to exit: %s (/init reached after %s)", vm.Uptime().Round(time.Millisecond), hello.Round(time.Millisecond))
	log, err := os.ReadFile(serial)
	if err != nil || !strings.Contains(string(log), "kiln-test-init: hello") || !strings.Contains(string(log), "Linux version") {
		t.Errorf("serial log incomplete (%v):\n%s", err, log)
	}
	if vm.Console().Output() != string(log) {
		t.Error("serial log differs from the captured console")
	}
}

// TestInitramfsTooBigForRAM: an initramfs too big for the guest's RAM must
// be reported (ErrInitramfsUnpack or ErrInitrdTooLarge), not hang or boot
// half an image silently.
func TestInitramfsTooBigForRAM(t *testing.T) {
	k := needVM(t)
	for _, tc := range []struct {
		name string
		fill func([]byte)
		want error
	}{
		// 200 MB of zeros: tiny once compressed, so QEMU loads it, but
		// it cannot be unpacked into 128 MB of RAM: the kernel says
		// "Initramfs unpacking failed: write error" and goes on.
		{"zeros", func([]byte) {}, ErrInitramfsUnpack},
		// 200 MB of random bytes: the compressed initramfs itself does
		// not fit, and QEMU refuses to start.
		{"random", func(b []byte) { rand.Read(b) }, ErrInitrdTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pad := filepath.Join(t.TempDir(), "pad")
			b := make([]byte, 200<<20)
			tc.fill(b)
			if err := os.WriteFile(pad, b, 0o644); err != nil {
				t.Fatal(err)
			}
			b = nil
			initrd := tinyInitramfs(t, func(a *initramfs.Archive) { a.FileFrom("/pad/data", pad, 0o644) })

			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			vm, err := Start(ctx, WithKernel(k.Vmlinuz), WithInitramfs(initrd), WithMemory(128))
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Kill()
			start := time.Now()
			_, err = vm.Expect(ctx, "kiln-test-init: hello", 3*time.Minute)
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
			t.Logf("reported after %s: %v", time.Since(start).Round(time.Millisecond), firstLine(err))
			vm.Kill()
			if err := vm.Wait(); !errors.Is(err, tc.want) {
				t.Errorf("Wait: want %v, got %v", tc.want, err)
			}
		})
	}
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// TestQMPNetworkAndShutdown: QMP works, a user-net port forward listens on
// loopback, a stream NIC connects to a hub, and Shutdown of a guest that
// ignores the ACPI power button ends with the VM killed.
func TestQMPNetworkAndShutdown(t *testing.T) {
	k := needVM(t)
	initrd := tinyInitramfs(t, nil)

	hub, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := hub.Accept()
		if err == nil {
			accepted <- c
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	vm, err := Start(ctx,
		WithKernel(k.Vmlinuz), WithInitramfs(initrd), WithAppend("kiln.test.hang"), WithMemory(256),
		WithUserNet(Forward{GuestPort: 22}),
		WithSocketNet(hub.Addr().String(), "52:54:00:00:00:07"),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if !slices.ContainsFunc(vm.Args(), func(s string) bool { return strings.Contains(s, "restrict=on") }) {
		t.Fatal("user netdev without restrict=on")
	}

	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(30 * time.Second):
		t.Fatalf("QEMU did not connect to the hub; stderr: %s", vm.Stderr())
	}

	ret, err := vm.QMP(ctx, "query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status = %s (%v)", ret, err)
	}

	hp := vm.HostPort(22)
	if hp == 0 {
		t.Fatal("no host port for guest port 22")
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(hp)), 5*time.Second); err != nil {
		t.Errorf("forwarded port %d not listening: %v", hp, err)
	} else {
		c.Close()
	}

	if _, err := vm.Expect(ctx, "kiln-test-init: waiting forever", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
	defer scancel()
	err = vm.Shutdown(sctx)
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Shutdown of a guest ignoring ACPI: want a killed error, got %v", err)
	}
	select {
	case <-vm.Done():
	default:
		t.Fatal("VM still running after Shutdown")
	}
}

// TestFirmwareDiskCDROMArgs checks that QEMU accepts the OVMF, disk and
// CD-ROM arguments (the ISO and qcow2 boot paths are tested with real images
// by the image builder): the VM starts and QMP lists both drives.
func TestFirmwareDiskCDROMArgs(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (scripts/install-deps.sh)")
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	iso := filepath.Join(dir, "empty.iso")
	if err := os.WriteFile(iso, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm, err := Start(ctx, WithOVMF(), WithDrive(Disk{Path: disk, Snapshot: true}), WithCDROM(iso), WithBoot("dc"), WithMemory(256))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	ret, err := vm.QMP(ctx, "query-block", nil)
	if err != nil {
		t.Fatalf("%v\nstderr: %s", err, vm.Stderr())
	}
	for _, want := range []string{`"disk0"`, `"cdrom0"`, "qcow2"} {
		if !strings.Contains(string(ret), want) {
			t.Errorf("query-block lacks %s: %s", want, ret)
		}
	}
	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
}

func TestHasVirtFlag(t *testing.T) {
	for _, tc := range []struct {
		cpuinfo string
		want    bool
	}{
		{"processor\t: 0\nflags\t\t: fpu vme sse2 svm lm\n", true},
		{"processor\t: 0\nflags\t\t: fpu vmx\nprocessor\t: 1\nflags\t\t: fpu vmx\n", true},
		{"processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor lm\n", false},
		{"vmx flags\t: ept vpid\n", false},
		{"", false},
	} {
		if got := hasVirtFlag(tc.cpuinfo); got != tc.want {
			t.Errorf("hasVirtFlag(%q) = %v", tc.cpuinfo, got)
		}
	}
}
