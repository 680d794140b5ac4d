package slots

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/image"
	"kiln/configs/nodeapi"
)

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// newPartition is a boot partition as the build leaves it: slot a's files
// and both bootloaders' configs naming it.
func newPartition(t *testing.T) *Partition {
	t.Helper()
	p := &Partition{Dir: t.TempDir()}
	k, i := image.SlotFiles(image.SlotA)
	for name, data := range map[string]string{k: "kernel a", i: "initrd a",
		image.SyslinuxConfigFile: "syslinux a\n", image.GrubConfigFile: "grub a\n"} {
		if err := os.MkdirAll(filepath.Dir(p.path(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p.path(name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func read(t *testing.T, p *Partition, name string) string {
	t.Helper()
	b, err := os.ReadFile(p.path(name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReadWithoutRecordIsTheBuilds(t *testing.T) {
	st, err := newPartition(t).Read()
	if err != nil || st.Default != image.SlotA || st.Trial != nil {
		t.Fatalf("%+v %v", st, err)
	}
}

func TestInstallChecksBeforeReplacing(t *testing.T) {
	p := newPartition(t)
	kernel, initrd := []byte("kernel b"), []byte("initrd b, longer")
	u := nodeapi.Upgrade{KernelSize: int64(len(kernel)), KernelSHA256: sum(kernel), InitrdSize: int64(len(initrd)), InitrdSHA256: sum(initrd)}
	kb, ib := image.SlotFiles(image.SlotB)

	// A damaged initramfs: the slot's initramfs is not replaced, and no
	// temporary file is left.
	bad := append([]byte{}, initrd...)
	bad[0] ^= 1
	err := p.Install(image.SlotB, u, bytes.NewReader(kernel), bytes.NewReader(bad))
	if err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("damaged initramfs: %v", err)
	}
	if _, err := os.Stat(p.path(ib)); err == nil {
		t.Error("a damaged initramfs was installed")
	}
	if _, err := os.Stat(p.path(ib) + ".new"); err == nil {
		t.Error("a temporary file was left")
	}
	// Short.
	if err := p.Install(image.SlotB, u, bytes.NewReader(kernel[:3]), bytes.NewReader(initrd)); err == nil || !strings.Contains(err.Error(), "bytes received") {
		t.Fatalf("short kernel: %v", err)
	}
	// Whole, over an earlier image in the slot and a stale upload.
	os.WriteFile(p.path(kb), []byte("an older kernel b"), 0o644)
	os.WriteFile(p.path(ib)+".new", []byte("half an upload"), 0o644)
	if err := p.Install(image.SlotB, u, bytes.NewReader(kernel), bytes.NewReader(initrd)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.path(ib) + ".new"); err == nil {
		t.Error("the stale upload was left")
	}
	if read(t, p, kb) != string(kernel) || read(t, p, ib) != string(initrd) {
		t.Error("slot b's files")
	}
	if ka, _ := image.SlotFiles(image.SlotA); read(t, p, ka) != "kernel a" {
		t.Error("slot a was touched")
	}
}

func TestPointAndRestoreConfigs(t *testing.T) {
	p := newPartition(t)
	rec := SlotRecord{SlotImage: nodeapi.SlotImage{ImageID: "abc", Release: "v2"}, Cmdline: []string{"console=ttyS0", "panic=-1"}}
	if err := p.PointConfigs(image.SlotB, rec, []string{"kiln.trial=b"}, true); err != nil {
		t.Fatal(err)
	}
	sys := read(t, p, image.SyslinuxConfigFile)
	for _, want := range []string{"KERNEL /b/vmlinuz", "INITRD /b/initrd.img", "console=ttyS0 panic=-1 kiln.boot=qcow2-bios kiln.statedisk=LABEL=kiln-state kiln.slot=b kiln.trial=b"} {
		if !strings.Contains(sys, want) {
			t.Errorf("syslinux.cfg lacks %q:\n%s", want, sys)
		}
	}
	grub := read(t, p, image.GrubConfigFile)
	if !strings.Contains(grub, "linux /b/vmlinuz console=ttyS0 panic=-1 kiln.boot=qcow2-uefi") || !strings.Contains(grub, "kiln slot b: v2 abc") {
		t.Errorf("grub.cfg:\n%s", grub)
	}
	if err := p.RestoreConfigs(); err != nil {
		t.Fatal(err)
	}
	if read(t, p, image.SyslinuxConfigFile) != "syslinux a\n" || read(t, p, image.GrubConfigFile) != "grub a\n" {
		t.Error("the saved configs were not put back")
	}
	if err := p.RestoreConfigs(); err != nil {
		t.Errorf("restoring with none saved: %v", err)
	}
}

func TestStateRoundTrip(t *testing.T) {
	p := newPartition(t)
	st := State{Default: image.SlotB, Slots: map[string]SlotRecord{image.SlotB: {SlotImage: nodeapi.SlotImage{Release: "v2"}}},
		Trial: &nodeapi.TrialResult{Slot: image.SlotB, Result: nodeapi.TrialGood}}
	if err := p.Write(st); err != nil {
		t.Fatal(err)
	}
	got, err := p.Read()
	if err != nil || got.Default != image.SlotB || got.Slots[image.SlotB].Release != "v2" || got.Trial.Result != nodeapi.TrialGood {
		t.Fatalf("%+v %v", got, err)
	}
	if err := os.WriteFile(p.path(image.SlotsFile), []byte(`{"default":"c"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Read(); err == nil || !strings.Contains(err.Error(), "want a or b") {
		t.Errorf("a record naming slot c: %v", err)
	}
}
