package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/qemu"
)

// The image every boot test boots: a master with the test init, all
// formats, built once.
var bootImage struct {
	once sync.Once
	res  *Result
	err  error
}

func builtImage(t *testing.T) *Result {
	t.Helper()
	initBin, clusterDir := fixtures(t)
	needKernel(t)
	bootImage.once.Do(func() {
		out := filepath.Join(shared.dir, "boot", "master")
		start := time.Now()
		bootImage.res, bootImage.err = Build(context.Background(), Request{
			Role:       node.RoleMaster,
			NodeBinary: initBin,
			ClusterDir: clusterDir,
			OutDir:     out,
			Progress:   tlogWriter{t},
			DiskSize:   2 << 30,
		})
		t.Logf("all formats built in %v", time.Since(start).Round(time.Millisecond))
		if bootImage.res != nil {
			for _, a := range bootImage.res.Artifacts {
				t.Logf("  %-6s %s %d bytes", a.Format, filepath.Base(a.Path), a.Size)
			}
			for _, s := range bootImage.res.Steps {
				t.Logf("  step %-9s %v", s.Name, s.Duration.Round(time.Millisecond))
			}
		}
	})
	if bootImage.err != nil {
		t.Fatal(bootImage.err)
	}
	return bootImage.res
}

// TestBoot boots each format of one image in QEMU (TCG without /dev/kvm)
// and waits for the test init to report how it booted, that every module
// in /etc/kiln/modules loads, that the tools run, and (from the disk) that
// the state partition is there.
func TestBoot(t *testing.T) {
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	if testing.Short() {
		t.Skip("boots VMs; skipped with -short")
	}
	res := builtImage(t)
	out := res.OutDir
	artifact := func(format string) string {
		for _, a := range res.Artifacts {
			if a.Format == format {
				return a.Path
			}
		}
		t.Fatalf("no %s artifact", format)
		return ""
	}
	cmdline, err := os.ReadFile(filepath.Join(out, "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		boot string
		opts func() []qemu.Option
	}{
		{"kernel", func() []qemu.Option {
			return []qemu.Option{qemu.WithKernel(res.Vmlinuz), qemu.WithInitramfs(res.Initramfs),
				qemu.WithAppend(strings.Fields(string(cmdline))...)}
		}},
		{"iso-bios", func() []qemu.Option {
			return []qemu.Option{qemu.WithCDROM(artifact("iso")), qemu.WithBoot("d")}
		}},
		{"iso-uefi", func() []qemu.Option {
			return []qemu.Option{qemu.WithCDROM(artifact("iso")), qemu.WithOVMF()}
		}},
		{"qcow2-bios", func() []qemu.Option {
			return []qemu.Option{qemu.WithDrive(qemu.Disk{Path: artifact("qcow2"), Snapshot: true}), qemu.WithBoot("c")}
		}},
		{"qcow2-uefi", func() []qemu.Option {
			return []qemu.Option{qemu.WithDrive(qemu.Disk{Path: artifact("qcow2"), Snapshot: true}), qemu.WithOVMF()}
		}},
		{"pxe", func() []qemu.Option {
			return []qemu.Option{qemu.WithUserNetConfig(qemu.UserNet{TFTPRoot: filepath.Join(out, "pxe"), BootFile: "boot.ipxe"}),
				qemu.WithBoot("n")}
		}},
	} {
		t.Run(tc.boot, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			serial := filepath.Join(t.TempDir(), "serial.log")
			start := time.Now()
			vm, err := qemu.Start(ctx, append(tc.opts(), qemu.WithSerialLog(serial), qemu.WithMemory(512))...)
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Kill()
			fail := func(format string, args ...any) {
				t.Helper()
				log, _ := os.ReadFile(serial)
				t.Fatalf("%s\nqemu: %s\nserial log:\n%s", fmt.Sprintf(format, args...), vm.CommandLine(), log)
			}
			if _, err := vm.Expect(ctx, "kiln-test-init: booted via kiln.boot="+tc.boot, 150*time.Second); err != nil {
				fail("%v", err)
			}
			booted := time.Since(start)
			if _, err := vm.Expect(ctx, "kiln-test-init: role=master os=kiln", 30*time.Second); err != nil {
				fail("%v", err)
			}
			want := fmt.Sprintf("kiln-test-init: modules loaded %d/%d", len(res.Modules), len(res.Modules))
			if _, err := vm.Expect(ctx, want, 60*time.Second); err != nil {
				fail("%v", err)
			}
			for _, tool := range res.Tools {
				if _, err := vm.Expect(ctx, "kiln-test-init: tool "+tool+" ok", 30*time.Second); err != nil {
					fail("%v", err)
				}
			}
			if strings.HasPrefix(tc.boot, "qcow2") {
				if _, err := vm.Expect(ctx, "kiln-test-init: state partition vda2 label "+image.StateLabel, 30*time.Second); err != nil {
					fail("%v", err)
				}
			}
			if _, err := vm.Expect(ctx, "kiln-test-init: powering off", 30*time.Second); err != nil {
				fail("%v", err)
			}
			if err := vm.Wait(); err != nil {
				fail("%v", err)
			}
			log, _ := os.ReadFile(serial)
			if strings.Contains(string(log), "module failed") || strings.Contains(string(log), "failed:") {
				fail("the test init reported a failure")
			}
			t.Logf("%s: booted to PID 1 in %v, powered off after %v (KVM %v)", tc.boot,
				booted.Round(100*time.Millisecond), vm.Uptime().Round(100*time.Millisecond), vm.KVM())
		})
	}
}

// TestBootBrokenRoot boots the image with its root image corrupted (one
// byte flipped) and with its initramfs cut short: stage 1 must stop with a
// FATAL line that names the fix, not hang or boot half a node.
func TestBootBrokenRoot(t *testing.T) {
	if err := qemu.Available(); err != nil {
		t.Skip(err)
	}
	if testing.Short() {
		t.Skip("boots VMs; skipped with -short")
	}
	res := builtImage(t)
	good, err := os.ReadFile(res.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	// The root image's bytes follow its cpio header and name; a
	// squashfs starts with "hsqs".
	name := strings.TrimPrefix(image.RootImageFile, "/")
	at := bytes.Index(good, []byte(name))
	sq := bytes.Index(good[at:], []byte("hsqs"))
	if at < 0 || sq < 0 {
		t.Fatalf("no %s in the initramfs", name)
	}
	corrupt := bytes.Clone(good)
	corrupt[at+sq+int(res.RootSize)/2] ^= 0xff

	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"corrupt root image", corrupt, "kiln: FATAL: the root image " + image.RootImageFile + " is corrupt"},
		{"truncated initramfs", good[:len(good)*6/10], "kiln: FATAL: the initramfs was not unpacked whole"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			initrd := filepath.Join(t.TempDir(), "initramfs.img")
			if err := os.WriteFile(initrd, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			vm, err := qemu.Start(ctx, qemu.WithKernel(res.Vmlinuz), qemu.WithInitramfs(initrd),
				qemu.WithAppend(DefaultCmdline()...), qemu.WithMemory(512))
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Kill()
			line, err := vm.ExpectRegexp(ctx, regexp.MustCompile(regexp.QuoteMeta(tc.want)+".*copy it again"), 150*time.Second)
			if errors.Is(err, qemu.ErrInitramfsUnpack) && strings.Contains(err.Error(), tc.want) {
				// The console watcher knows this failure and ends the
				// wait with it: the line is in the error.
				line, err = err.Error(), nil
			}
			if err != nil {
				t.Fatalf("%v\nconsole:\n%s", err, vm.Console().Tail(30))
			}
			if !strings.Contains(line, "rebuild") && !strings.Contains(line, "memory") {
				t.Errorf("the FATAL line names no fix: %s", line)
			}
			if strings.Contains(vm.Console().Output(), "kiln-test-init") {
				t.Error("the node's init ran anyway")
			}
			t.Logf("%s: %s", tc.name, line)
		})
	}
}
