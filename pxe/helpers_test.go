package pxe

import (
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/builder"
	"kiln/internal/testutil"
)

// fakeImage writes an image directory as "kiln build --format kernel,pxe"
// leaves it, with small fake boot files, and loads it.
func fakeImage(t *testing.T, role node.Role) *Image {
	t.Helper()
	dir := filepath.Join(t.TempDir(), string(role))
	if err := os.MkdirAll(filepath.Join(dir, "pxe"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := builder.Manifest{ID: "id-" + string(role), Role: role, Cmdline: []string{"console=tty0", "console=ttyS0,115200", "panic=-1"}}
	for _, a := range []builder.Artifact{
		{Format: "kernel", Path: image.KernelFile}, {Format: "kernel", Path: image.InitramfsFile}, {Format: "kernel", Path: image.CmdlineFile},
		{Format: "pxe", Path: "pxe/" + image.KernelFile}, {Format: "pxe", Path: "pxe/" + image.InitramfsFile}, {Format: "pxe", Path: "pxe/" + image.PXEScript},
	} {
		m.Artifacts = append(m.Artifacts, a)
	}
	data, _ := json.Marshal(m)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(image.ManifestFile, data)
	write("vmlinuz", []byte("kernel-format kernel"))
	write("initramfs.img", []byte("kernel-format initramfs"))
	write("cmdline", []byte(strings.Join(m.Cmdline, " ")+" kiln.boot=kernel\n"))
	kernel, initrd := make([]byte, 100_000), make([]byte, 300_000)
	rand.Read(kernel)
	rand.Read(initrd)
	write("pxe/vmlinuz", kernel)
	write("pxe/initramfs.img", initrd)
	write("pxe/boot.ipxe", []byte("#!ipxe\n"))
	write("admin.kubeconfig", []byte("secret"))
	img, err := LoadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// fakeIPXEDir holds stand-ins for Debian's iPXE binaries.
func fakeIPXEDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{BIOSBootFile, UEFIBootFile} {
		b := make([]byte, 70_000)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// logBuffer collects a server's log lines.
type logBuffer struct{ testutil.SyncBuffer }

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitLog waits for a log line holding every one of the strings.
func (l *logBuffer) waitLog(t *testing.T, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(l.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in:\n%s", parts, l.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fixedSecretsKey is a secrets key for tests: the same in every process
// (the DHCP tests' helper runs as a child).
func fixedSecretsKey() *SecretsKey {
	k, err := NewSecretsKey([]byte("kiln pxe tests: not a secret key, 32 bytes or more"))
	if err != nil {
		panic(err)
	}
	return k
}

func mustMachines(t *testing.T, text string) *Machines {
	t.Helper()
	ms, err := ParseMachines("machines.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func mac(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
