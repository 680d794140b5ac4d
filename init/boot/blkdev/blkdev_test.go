package blkdev

import (
	"bytes"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/image"
)

func diskImage(t *testing.T, size int64, write func(f *os.File)) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if write != nil {
		write(f)
	}
	f.Close()
	return p
}

func writeAt(b []byte, off int64) func(f *os.File) {
	return func(f *os.File) { f.WriteAt(b, off) }
}

func TestProbe(t *testing.T) {
	fat := make([]byte, 512)
	copy(fat[0x47:], "KILN-CONFIG")
	copy(fat[0x52:], "FAT32   ")
	fat[510], fat[511] = 0x55, 0xaa
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xaa
	iso := make([]byte, 2048)
	copy(iso[1:], "CD001")
	copy(iso[40:], "KILN-CONFIG                     ")
	random := make([]byte, 4096)
	rand.New(rand.NewSource(1)).Read(random)

	for _, tc := range []struct {
		name  string
		size  int64
		write func(*os.File)
		typ   string
		label string
	}{
		{"zeros", 64 << 20, nil, "", ""},
		{"tiny zeros", 4096, nil, "", ""},
		{"random head", 64 << 20, writeAt(random, 8192), "data", ""},
		{"something at the end", 64 << 20, writeAt([]byte("md superblock"), 64<<20-4096), "data", ""},
		{"gpt", 64 << 20, writeAt([]byte("EFI PART"), 512), "gpt", ""},
		{"mbr", 64 << 20, writeAt(mbr, 0), "dos", ""},
		{"fat32", 64 << 20, writeAt(fat, 0), "vfat", "KILN-CONFIG"},
		{"iso9660", 64 << 20, writeAt(iso, 32768), "iso9660", "KILN-CONFIG"},
		{"xfs", 64 << 20, writeAt([]byte("XFSB"), 0), "xfs", ""},
		{"swap", 64 << 20, writeAt([]byte("SWAPSPACE2"), 4086), "swap", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ProbeDevice(diskImage(t, tc.size, tc.write))
			if err != nil {
				t.Fatal(err)
			}
			if p.Type != tc.typ || p.Label != tc.label || p.Blank() != (tc.typ == "") {
				t.Errorf("probe %+v (%s), want type %q label %q", p, p, tc.typ, tc.label)
			}
		})
	}
}

// A file formatted by mke2fs, as PID 1 formats a blank state disk.
func TestProbeExt4(t *testing.T) {
	mke2fs, err := exec.LookPath("mke2fs")
	if err != nil {
		if mke2fs, err = exec.LookPath("/sbin/mke2fs"); err != nil {
			t.Skipf("mke2fs not installed (e2fsprogs): %v", err)
		}
	}
	p := diskImage(t, 32<<20, nil)
	if out, err := exec.Command(mke2fs, "-q", "-F", "-t", "ext4", "-L", image.StateLabel, p).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	got, err := ProbeDevice(p)
	if err != nil {
		t.Fatal(err)
	}
	if got.Type != "ext4" || got.Label != image.StateLabel || got.Blank() || got.MountType() != "ext4" {
		t.Errorf("probe %+v", got)
	}
}

func TestBlockDevicesAndLabels(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	add := func(name, size string, content []byte) {
		os.MkdirAll(filepath.Join(sys, name), 0o755)
		os.WriteFile(filepath.Join(sys, name, "size"), []byte(size+"\n"), 0o644)
		img := make([]byte, 64<<10)
		copy(img, content)
		os.WriteFile(filepath.Join(dev, name), img, 0o644)
	}
	fat := make([]byte, 512)
	copy(fat[0x2b:], "KILN-CONFIG")
	copy(fat[0x36:], "FAT16   ")
	fat[510], fat[511] = 0x55, 0xaa
	add("vdb", "128", fat)
	add("vda", "128", nil)
	add("loop0", "128", fat)
	add("sr0", "0", nil)
	devs := List(sys, dev)
	var names []string
	for _, d := range devs {
		names = append(names, d.Name)
	}
	if strings.Join(names, " ") != "vda vdb" {
		t.Errorf("block devices %v, want vda vdb", names)
	}
	found := FindByLabel(devs, "kiln-config")
	if len(found) != 1 || found[0].Path != filepath.Join(dev, "vdb") {
		t.Errorf("by label: %+v", found)
	}
}

func TestAllZero(t *testing.T) {
	b := make([]byte, 10000)
	if !allZero(b) {
		t.Error("zeros")
	}
	b[9999] = 1
	if allZero(b) || !bytes.Equal(b[:10], make([]byte, 10)) {
		t.Error("a one at the end")
	}
}
