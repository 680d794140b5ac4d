package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln/configs/cluster"
	"kiln/images/kernel"
	"kiln/pki"
	"kiln/qemu"

	"kiln/internal/testutil"
)

// testInit builds the image builder's test init (a tiny static PID 1) to
// stand in for kiln-node.
func testInit(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "testinit")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", p, "../../images/builder/testdata/testinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build testinit: %v\n%s", err, out)
	}
	// Stage 1 goes beside it, where kiln build looks by default.
	cmd = exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(filepath.Dir(p), "kiln-init"), "../kiln-init")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build kiln-init: %v\n%s", err, out)
	}
	return p
}

func TestBuildErrors(t *testing.T) {
	initBin := testInit(t)
	dir := t.TempDir()
	t.Chdir(dir)
	cfg := filepath.Join(dir, "worker.yaml")
	os.WriteFile(cfg, []byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: worker\n"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"no role", []string{"build"}, 2, []string{"kiln build needs --role master or --role worker"}},
		{"bad role", []string{"build", "--role", "boss"}, 2, []string{`--role "boss": want master or worker`}},
		{"bad format", []string{"build", "--role", "master", "--format", "iso,vmdk"}, 2,
			[]string{`--format "vmdk": unknown format (want one or more of kernel,iso,qcow2,pxe)`}},
		{"bad kernel", []string{"build", "--role", "master", "--kernel", "rt"}, 2, []string{`--kernel "rt": want cloud or generic`}},
		{"bad disk size", []string{"build", "--role", "master", "--disk-size", "0"}, 2, []string{"--disk-size 0"}},
		{"argument", []string{"build", "--role", "master", "extra"}, 2, []string{"kiln build takes no arguments"}},
		{"missing node binary", []string{"build", "--role", "master"}, 1,
			[]string{"node binary bin/kiln-node does not exist", "make bin/kiln-node", "--node-binary"}},
		{"node binary not ELF", []string{"build", "--role", "master", "--node-binary", cfg}, 1,
			[]string{"node binary " + cfg + " is not an ELF executable"}},
		{"missing config", []string{"build", "--role", "master", "--node-binary", initBin, "--config", "nope.yaml"}, 1,
			[]string{"config nope.yaml: no such file or directory"}},
		{"config of the other role", []string{"build", "--role", "master", "--node-binary", initBin, "--config", cfg}, 1,
			[]string{"config " + cfg + ": role is worker, but the image is for a master"}},
		{"missing cluster", []string{"build", "--role", "worker", "--node-binary", initBin, "--cluster", "clusters/typo"}, 1,
			[]string{"cluster directory clusters/typo does not exist", "kiln gen cluster"}},
		{"run: bad boot", []string{"run", "--boot", "floppy"}, 2, []string{`--boot "floppy": want one of kernel, iso, qcow2, pxe`}},
		{"run: uefi kernel", []string{"run", "--uefi"}, 2, []string{"--uefi needs --boot iso, qcow2 or pxe"}},
		{"run: append iso", []string{"run", "--boot", "iso", "--append", "x=1"}, 2, []string{"--append works with --boot kernel only"}},
		{"run: no image", []string{"run", "--image", "out/none"}, 1, []string{"out/none is not a kiln image directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := kiln(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, errOut)
			}
			if out != "" {
				t.Errorf("stdout %q", out)
			}
			if !strings.HasPrefix(errOut, "kiln: ") || strings.Contains(errOut, "Usage:") {
				t.Errorf("stderr %q: want one error prefixed kiln:", errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
			// A failed build writes nothing: no default cluster, no image.
			if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
				t.Errorf("out/ written by a failed command")
			}
		})
	}
}

// syncBuffer is safe for the console goroutine.
type syncBuffer = testutil.SyncBuffer

// TestBuildAndRun builds a master image (kernel format) with the default
// cluster directory, then boots it with "kiln run" and stops it like
// Ctrl-C does: the ACPI power button, which the test init waits for.
func TestBuildAndRun(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches the kernel and boots a VM; skipped with -short")
	}
	initBin := testInit(t)
	cache := kernel.DefaultCacheDir() // the repository's, before Chdir
	dir := t.TempDir()
	t.Chdir(dir)

	// The test init runs no pods: a control-plane-only master needs no
	// worker stack programs (runc, CNI), which make test-unit does not build.
	cfg := filepath.Join(dir, "master.yaml")
	if err := os.WriteFile(cfg, []byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: master\nrunPods: false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, out, errOut := kiln(t, "build", "--role", "master", "--node-binary", initBin, "--config", cfg, "--format", "kernel,pxe", "--cache-dir", cache)
	if code != 0 {
		t.Fatalf("build: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	t.Logf("kiln build in %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	for _, want := range []string{
		"generated cluster kiln there",
		"kiln build: initramfs",
		"out/master/pxe/boot.ipxe",
		"kiln build: boot it with: kiln run --image out/master",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("build output lacks %q", want)
		}
	}
	if _, err := cluster.Load(defaultClusterDir); err != nil {
		t.Fatalf("default cluster: %v", err)
	}
	for _, f := range []string{"vmlinuz", "initramfs.img", "cmdline", "image.json", "pxe/boot.ipxe", "pxe/vmlinuz", "pxe/initramfs.img"} {
		if _, err := os.Stat(filepath.Join("out/master", f)); err != nil {
			t.Error(err)
		}
	}
	// Once: a second build uses the cluster it made.
	code, out, errOut = kiln(t, "build", "--role", "master", "--node-binary", initBin, "--config", cfg, "--format", "kernel", "--cache-dir", cache)
	if code != 0 || strings.Contains(out, "generated cluster") {
		t.Fatalf("second build: exit %d\n%s%s", code, out, errOut)
	}

	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr syncBuffer
	sigs := make(chan os.Signal, 2)
	done := make(chan error, 1)
	start = time.Now()
	f := runFlags{image: "out/master", boot: "kernel", memory: 512, cpus: 1, apiPort: 0,
		appendArgs: []string{"kiln.test.powerbutton"}, shutdownTimeout: time.Minute}
	go func() { done <- runImage(ctx, &stdout, &stderr, f, sigs) }()

	// Press the power button once the guest waits for it.
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(stdout.String(), "kiln-test-init: waiting for the power button") {
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not get to the power button\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
		select {
		case err := <-done:
			t.Fatalf("run ended early: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	booted := time.Since(start)
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("run did not return after SIGTERM\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	t.Logf("kiln run: guest waiting for the power button after %v, powered off after %v", booted.Round(100*time.Millisecond),
		time.Since(start).Round(100*time.Millisecond))
	console := stdout.String()
	for _, want := range []string{
		"kubeconfig: out/master/admin.kubeconfig\n",
		"kiln-test-init: booted via kiln.boot=kernel",
		"kiln-test-init: power button pressed",
	} {
		if !strings.Contains(console, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if !strings.Contains(stderr.String(), "pressing the power button") || !strings.Contains(stderr.String(), "powered off") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
	log, err := os.ReadFile("out/master/console.log")
	if err != nil || !strings.Contains(string(log), "kiln-test-init: power button pressed") {
		t.Errorf("console.log: %v\n%s", err, log)
	}
	data, err := os.ReadFile("out/master/admin.kubeconfig")
	if err != nil {
		t.Fatal(err)
	}
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		t.Fatal(err)
	}
	port := strings.TrimPrefix(kc.Server, "https://127.0.0.1:")
	if port == kc.Server || port == "0" || !strings.Contains(stderr.String(), fmt.Sprintf("forwarded from 127.0.0.1:%s", port)) {
		t.Errorf("kubeconfig server %s; stderr %s", kc.Server, stderr.String())
	}
	if fi, err := os.Stat("out/master/admin.kubeconfig"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin.kubeconfig mode: %v %v", fi.Mode(), err)
	}
}
