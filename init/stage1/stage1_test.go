package stage1

import (
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/image"
)

func TestCheckComplete(t *testing.T) {
	// The builder writes initramfs's marker and stage 1 checks image's:
	// one name.
	root := t.TempDir()
	err := CheckComplete(root)
	if err == nil || !strings.Contains(err.Error(), "too little memory") || !strings.Contains(err.Error(), image.CompleteMarker) ||
		!strings.Contains(err.Error(), image.MemoryAdvice()) || !strings.Contains(err.Error(), "MiB)") {
		t.Fatalf("a root without the marker: %v", err)
	}
	os.WriteFile(filepath.Join(root, image.CompleteMarker), nil, 0o444)
	if err := CheckComplete(root); err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	dir := t.TempDir()
	img, sum := filepath.Join(dir, "root.squashfs"), filepath.Join(dir, "root.crc32")
	data := []byte(strings.Repeat("squashfs bytes ", 1000))
	os.WriteFile(img, data, 0o644)
	os.WriteFile(sum, []byte(fmt.Sprintf("%08x %d\n", crc32.ChecksumIEEE(data), len(data))), 0o644)
	if n, err := Verify(img, sum); err != nil || n != int64(len(data)) {
		t.Fatalf("a good image: %d, %v", n, err)
	}
	// Truncated, then one byte flipped: both named corrupt, with the fix.
	for name, bad := range map[string][]byte{"truncated": data[:len(data)/2], "flipped": append([]byte{'S'}, data[1:]...)} {
		os.WriteFile(img, bad, 0o644)
		_, err := Verify(img, sum)
		if err == nil || !strings.Contains(err.Error(), "is corrupt") || !strings.Contains(err.Error(), "rebuild the image") {
			t.Errorf("%s image: %v", name, err)
		}
	}
	os.Remove(sum)
	if _, err := Verify(img, sum); err == nil || !strings.Contains(err.Error(), "rebuild the image") {
		t.Errorf("no checksum: %v", err)
	}
}

func TestFreeInitramfs(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"init", "kiln/root.squashfs", "lib/modules/6.1/kernel/fs/squashfs.ko", "sysroot/etc/kept"} {
		p := filepath.Join(root, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("0123456789"), 0o644)
	}
	os.Symlink("usr/bin", filepath.Join(root, "bin"))
	freed := freeInitramfs(root, filepath.Join(root, "sysroot"))
	if freed != 30 {
		t.Errorf("freed %d bytes, want 30", freed)
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 1 || ents[0].Name() != "sysroot" {
		t.Errorf("left %v, want only sysroot", ents)
	}
	if _, err := os.Stat(filepath.Join(root, "sysroot/etc/kept")); err != nil {
		t.Errorf("the new root was touched: %v", err)
	}
}

func TestCopyTree(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "kiln/cluster/pki"), 0o700)
	os.WriteFile(filepath.Join(src, "kiln/config.yaml"), []byte("role: master\n"), 0o644)
	os.WriteFile(filepath.Join(src, "kiln/cluster/pki/ca.key"), []byte("KEY"), 0o600)
	os.Symlink("config.yaml", filepath.Join(src, "kiln/link"))
	if err := copyTree(src, dst); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{
		"kiln/config.yaml":        0o644,
		"kiln/cluster":            os.ModeDir | 0o700,
		"kiln/cluster/pki/ca.key": 0o600,
		"kiln/link":               os.ModeSymlink | 0o777,
	} {
		fi, err := os.Lstat(filepath.Join(dst, p))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: %v %v, want %v", p, fi.Mode(), err, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "kiln/cluster/pki/ca.key")); string(b) != "KEY" {
		t.Errorf("ca.key: %q", b)
	}
	if err := copyTree(filepath.Join(src, "none"), dst); err != nil {
		t.Errorf("a missing source: %v", err)
	}
}
