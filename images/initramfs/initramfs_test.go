package initramfs

import (
	"bytes"
	"kiln/configs/image"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var t2001 = time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)

// sample builds the same archive from the same inputs every time.
func sample(t *testing.T, hostFile string) *Archive {
	a := New()
	a.File("/init", []byte("#!/bin/sh\necho hi\n"), 0o755)
	a.Dir("/etc", 0o755)
	a.File("etc/kiln/config.yaml", []byte("role: worker\n"), 0o640)
	a.Dir("/tmp", 0o1777|os.ModeSticky)
	a.Dir("/root", 0o700)
	a.Symlink("/bin/sh", "busybox")
	a.Symlink("/lib", "usr/lib")
	a.File("/bin/busybox", []byte{0x7f, 'E', 'L', 'F', 1, 2, 3}, 0o755)
	a.File("/usr/lib/empty", nil, 0o644)
	a.FileFrom("/usr/lib/odd-size.bin", hostFile, 0o600)
	a.FileFrom("/usr/lib/host-mode.bin", hostFile, 0)
	a.AddDevConsole()
	a.CharDev("/dev/null", 0o666, 1, 3)
	return a
}

func writeHost(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "host.bin")
	data := make([]byte, 12345) // not a multiple of 4: exercises padding
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(p, data, 0o751); err != nil {
		t.Fatal(err)
	}
	return p
}

func archiveBytes(t *testing.T, a *Archive) []byte {
	var b bytes.Buffer
	n, err := a.WriteTo(&b)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(b.Len()) {
		t.Fatalf("WriteTo returned %d, wrote %d", n, b.Len())
	}
	return b.Bytes()
}

func TestReproducible(t *testing.T) {
	host := writeHost(t)
	one := archiveBytes(t, sample(t, host))
	two := archiveBytes(t, sample(t, host))
	if !bytes.Equal(one, two) {
		t.Fatal("same inputs gave different archives")
	}
	// Touching the host file's mtime must not change anything.
	if err := os.Chtimes(host, t2001, t2001); err != nil {
		t.Fatal(err)
	}
	if three := archiveBytes(t, sample(t, host)); !bytes.Equal(one, three) {
		t.Fatal("host mtime leaked into the archive")
	}
	if !bytes.HasPrefix(one, []byte("070701")) || !bytes.Contains(one, []byte("TRAILER!!!")) {
		t.Fatal("not a newc archive")
	}
	if len(one)%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", len(one))
	}

	dir := t.TempDir()
	z1, z2 := filepath.Join(dir, "a.cpio.zst"), filepath.Join(dir, "b.cpio.zst")
	raw1, c1, err := WriteZstd(z1, sample(t, host))
	if err != nil {
		t.Fatal(err)
	}
	raw2, c2, err := WriteZstd(z2, sample(t, host))
	if err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(z1)
	b2, _ := os.ReadFile(z2)
	if raw1 != int64(len(one)) || raw1 != raw2 || c1 != c2 || c1 != int64(len(b1)) || !bytes.Equal(b1, b2) {
		t.Fatalf("zstd output not reproducible: raw %d/%d compressed %d/%d (file %d)", raw1, raw2, c1, c2, len(b1))
	}
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Skip("zstd tool not installed (scripts/install-deps.sh)")
	}
	out, err := exec.Command("zstd", "-d", "-c", z1).Output()
	if err != nil {
		t.Fatalf("zstd -d: %v", err)
	}
	if !bytes.Equal(out, one) {
		t.Fatal("zstd -d output differs from the raw archive")
	}
}

func TestCpioListAndExtract(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed (scripts/install-deps.sh)")
	}
	host := writeHost(t)
	raw := archiveBytes(t, sample(t, host))

	cmd := exec.Command("cpio", "-t", "--quiet")
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	got := strings.Fields(string(out))
	want := []string{
		"bin", "bin/busybox", "bin/sh",
		"dev", "dev/console", "dev/null",
		"etc", "etc/kiln", "etc/kiln/config.yaml",
		"init", "lib", "root", "tmp",
		"usr", "usr/lib", "usr/lib/empty", "usr/lib/host-mode.bin", "usr/lib/odd-size.bin",
		image.CompleteMarker, // last, out of name order
	}
	if !slices.Equal(got, want) {
		t.Fatalf("cpio -t:\n got %q\nwant %q", got, want)
	}

	if os.Geteuid() != 0 {
		t.Skip("extracting device nodes needs root")
	}
	dir := t.TempDir()
	cmd = exec.Command("cpio", "-idm", "--quiet")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(raw)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, out)
	}
	checkMode := func(p string, want os.FileMode) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(dir, p))
		if err != nil {
			t.Error(err)
			return
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
	checkMode("init", 0o755)
	checkMode("etc/kiln/config.yaml", 0o640)
	checkMode("etc/kiln", os.ModeDir|0o755)
	checkMode("root", os.ModeDir|0o700)
	checkMode("tmp", os.ModeDir|os.ModeSticky|0o777)
	checkMode("usr/lib/odd-size.bin", 0o600)
	checkMode("usr/lib/host-mode.bin", 0o751)
	checkMode("dev/console", os.ModeDevice|os.ModeCharDevice|0o600)
	checkMode("bin/sh", os.ModeSymlink|0o777)
	if tgt, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || tgt != "busybox" {
		t.Errorf("bin/sh -> %q, %v", tgt, err)
	}
	if tgt, err := os.Readlink(filepath.Join(dir, "lib")); err != nil || tgt != "usr/lib" {
		t.Errorf("lib -> %q, %v", tgt, err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(dir, "dev/console"), &st); err != nil {
		t.Fatal(err)
	}
	if maj, min := (st.Rdev>>8)&0xfff, st.Rdev&0xff; maj != 5 || min != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", maj, min)
	}
	hostData, _ := os.ReadFile(host)
	for _, p := range []string{"usr/lib/odd-size.bin", "usr/lib/host-mode.bin"} {
		if b, err := os.ReadFile(filepath.Join(dir, p)); err != nil || !bytes.Equal(b, hostData) {
			t.Errorf("%s: contents differ (%v)", p, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/kiln/config.yaml")); string(b) != "role: worker\n" {
		t.Errorf("config.yaml = %q", b)
	}
	if fi, err := os.Stat(filepath.Join(dir, "init")); err != nil || fi.ModTime().Unix() != 0 {
		t.Errorf("init mtime %v, %v; want the epoch", fi.ModTime(), err)
	}
}

func TestParentNotDir(t *testing.T) {
	a := New()
	a.Symlink("lib", "usr/lib")
	a.File("lib/libc.so.6", []byte("x"), 0o644)
	if _, err := a.WriteTo(new(bytes.Buffer)); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("want a parent-not-a-directory error, got %v", err)
	}
	a = New()
	a.File("/", nil, 0o644)
	if _, err := a.WriteTo(new(bytes.Buffer)); err == nil {
		t.Fatal("adding the root as a file should fail")
	}
	a = New()
	a.FileFrom("x", "/nonexistent/kiln", 0o644)
	if _, err := a.WriteTo(new(bytes.Buffer)); err == nil {
		t.Fatal("missing host file should fail")
	}
}

// TestStreamsLargeFiles checks that FileFrom does not read a host file into
// memory: a 256 MiB sparse file goes through with a small fraction of that
// allocated.
func TestStreamsLargeFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	const size = 256 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	a := New()
	a.FileFrom("big", p, 0o755)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n, err := a.WriteTo(discard{})
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if n < size {
		t.Fatalf("wrote %d bytes", n)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Fatalf("WriteTo allocated %d MiB for a %d MiB file: not streamed", alloc>>20, size>>20)
	}
}

// discard is io.Discard without ReaderFrom, so the copy goes through
// WriteTo's own buffer as it does for a file or an encoder.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func TestAddHostBinary(t *testing.T) {
	bin := "/usr/bin/zstd" // dynamically linked, several libraries
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s not installed", bin)
	}
	deps, err := ELFDeps(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s needs %v", bin, deps)
	if len(deps) == 0 || deps[0].Dest != "/lib64/ld-linux-x86-64.so.2" {
		t.Fatalf("loader missing or not first: %v", deps)
	}
	var haveLibc bool
	for _, d := range deps {
		haveLibc = haveLibc || filepath.Base(d.Dest) == "libc.so.6"
	}
	if !haveLibc {
		t.Fatalf("libc.so.6 missing: %v", deps)
	}

	a := New()
	if err := a.AddHostBinary(bin, "/bin/zstd"); err != nil {
		t.Fatal(err)
	}
	a.File("/hello", []byte("kiln"), 0o644)
	if os.Geteuid() != 0 {
		t.Skip("running the copied binary in a chroot needs root")
	}
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(archiveBytes(t, a))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, out)
	}
	// Only the archive's contents are visible in the chroot: if a library
	// were missing, the loader would fail.
	out, err := exec.Command("chroot", dir, "/bin/zstd", "-q", "-c", "/hello").CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s /bin/zstd: %v\n%s", dir, err, out)
	}
	if !bytes.HasPrefix(out, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		t.Fatalf("unexpected output %q", out)
	}
}

func TestAddHostBinaryStatic(t *testing.T) {
	// The test binary itself may be static or not; a Go binary built with
	// CGO_ENABLED=0 is the common case for /init. Build one.
	if testing.Short() {
		t.Skip("builds a Go binary")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644)
	out := filepath.Join(dir, "static")
	cmd := exec.Command("go", "build", "-o", out, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	deps, err := ELFDeps(out)
	if err != nil || len(deps) != 0 {
		t.Fatalf("static binary deps = %v, %v", deps, err)
	}
}

func TestAddTree(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "kernel/net"), 0o755)
	os.WriteFile(filepath.Join(dir, "kernel/net/a.ko"), []byte("ko"), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("kernel/net/a.ko:\n"), 0o644)
	os.Symlink("kernel", filepath.Join(dir, "link"))
	a := New()
	if err := a.AddTree(dir, "/lib/modules/6.1.0-test"); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"lib/modules/6.1.0-test",
		"lib/modules/6.1.0-test/kernel",
		"lib/modules/6.1.0-test/kernel/net",
		"lib/modules/6.1.0-test/kernel/net/a.ko",
		"lib/modules/6.1.0-test/link",
		"lib/modules/6.1.0-test/modules.dep",
	}
	if got := a.Paths(); !slices.Equal(got, want) {
		t.Fatalf("Paths:\n got %q\nwant %q", got, want)
	}
	if _, err := a.WriteTo(discard{}); err != nil {
		t.Fatal(err)
	}
}

// TestFileModes: an initramfs may hold keys, so the writers make it 0600
// unless told otherwise, also over an existing file that was readable.
func TestFileModes(t *testing.T) {
	host := writeHost(t)
	dir := t.TempDir()
	mode := func(p string) os.FileMode {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	z := filepath.Join(dir, "initramfs.img")
	if err := os.WriteFile(z, []byte("an older, readable build"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := WriteZstd(z, sample(t, host)); err != nil {
		t.Fatal(err)
	}
	if m := mode(z); m != 0o600 {
		t.Errorf("WriteZstd: mode %04o, want 0600", m)
	}
	w := filepath.Join(dir, "worker.img")
	if _, _, err := WriteZstdMode(w, sample(t, host), 0o644); err != nil {
		t.Fatal(err)
	}
	if m := mode(w); m != 0o644 {
		t.Errorf("WriteZstdMode 0644: mode %04o", m)
	}
	raw := filepath.Join(dir, "raw.cpio")
	os.WriteFile(raw, nil, 0o644)
	if _, err := WriteFile(raw, sample(t, host)); err != nil {
		t.Fatal(err)
	}
	if m := mode(raw); m != 0o600 {
		t.Errorf("WriteFile: mode %04o, want 0600", m)
	}
}

func TestWriteDir(t *testing.T) {
	host := filepath.Join(t.TempDir(), "tool")
	os.WriteFile(host, []byte("#!tool"), 0o750)
	a := New()
	a.Dir("root", 0o700)
	a.Dir("ro", 0o555)
	a.File("ro/file", []byte("in a read-only dir"), 0o644)
	a.File("usr/bin/suid", []byte("x"), 0o755|os.ModeSetuid)
	a.FileFrom("usr/bin/tool", host, 0)
	a.Symlink("bin", "usr/bin")
	dir := t.TempDir()
	files, size, err := a.WriteDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if files != 3 || size != int64(len("in a read-only dir")+1+len("#!tool")) {
		t.Errorf("%d files, %d bytes", files, size)
	}
	for p, want := range map[string]os.FileMode{
		"root":         os.ModeDir | 0o700,
		"ro":           os.ModeDir | 0o555,
		"ro/file":      0o644,
		"usr":          os.ModeDir | 0o755, // implicit parent
		"usr/bin/suid": os.ModeSetuid | 0o755,
		"usr/bin/tool": 0o750, // the host file's bits
	} {
		fi, err := os.Lstat(filepath.Join(dir, p))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, %v; want %v", p, fi.Mode(), err, want)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin")); err != nil || target != "usr/bin" {
		t.Errorf("bin -> %q, %v", target, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "usr/bin/tool")); string(b) != "#!tool" {
		t.Errorf("tool: %q", b)
	}
	a.AddDevConsole()
	if _, _, err := a.WriteDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "dev/console") {
		t.Errorf("a device node: %v", err)
	}
}

func TestExtractMergeDigest(t *testing.T) {
	host := filepath.Join(t.TempDir(), "bin")
	os.WriteFile(host, []byte("binary"), 0o755)
	build := func() *Archive {
		a := New()
		a.FileFrom("init", host, 0)
		a.File("etc/kiln/config.yaml", []byte("role: worker\n"), 0o644)
		a.File("etc/kiln/cluster/token", []byte("t\n"), 0o600)
		a.File("etc/kiln/modules", []byte("loop\n"), 0o644)
		return a
	}
	a := build()
	d1, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	// Host file times do not matter; contents do.
	future := time.Now().Add(time.Hour)
	os.Chtimes(host, future, future)
	if d2, _ := build().Digest(); d2 != d1 {
		t.Error("the digest changed with a host file's time")
	}
	os.WriteFile(host, []byte("binarY"), 0o755)
	if d3, _ := build().Digest(); d3 == d1 {
		t.Error("the digest did not change with a host file's contents")
	}

	node := a.Extract("etc/kiln/config.yaml", "/etc/kiln/cluster")
	if got := node.Paths(); !reflect.DeepEqual(got, []string{"etc/kiln/cluster/token", "etc/kiln/config.yaml"}) {
		t.Errorf("extracted %v", got)
	}
	if got := a.Paths(); !reflect.DeepEqual(got, []string{"etc/kiln/modules", "init"}) {
		t.Errorf("left %v", got)
	}
	outer := New()
	outer.Merge(node, "kiln")
	if got := outer.Paths(); !reflect.DeepEqual(got, []string{"kiln/etc/kiln/cluster/token", "kiln/etc/kiln/config.yaml"}) {
		t.Errorf("merged %v", got)
	}
}
