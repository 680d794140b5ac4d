// Package slots keeps the A/B slots of a disk-booted node's boot partition
// (image.SlotFiles): it writes an upgrade's kernel and initramfs to the
// slot not booted, records each slot's image and the trial of the last
// upgrade in image.SlotsFile, points the bootloaders' configs at a slot,
// and loads a slot's kernel for kexec.
//
// The bootloaders' configs name the default slot, the one that last came
// up. An upgrade boots the other slot on trial without changing them
// (kexec), so that any failure of the new image (PID 1 stopping, the
// deadline passing, a panic, a reset) ends in the firmware booting the
// slot that worked. Only where kexec is refused does the trial go through
// the firmware: the configs then name the trial slot for one boot, and its
// PID 1 puts the saved ones back first thing (Partition.RestoreConfigs).
package slots

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"kiln/configs/image"
	"kiln/configs/nodeapi"
	"kiln/internal/fsutil"
)

// Errors of an upgrade the node API answers 409 to.
var (
	ErrNoSlots = errors.New("this node was not booted from a kiln disk with slots: upgrade it by booting the new image (ISO), or serving it (PXE: kiln pxe serve)")
	ErrOnTrial = errors.New("this node runs an upgrade on trial: wait until it is the default (kiln status --node shows it) or rolled back")
)

// State is image.SlotsFile. A boot partition without one is as the build
// left it: slot a, the default, holding the image the disk was built from.
type State struct {
	Default string                `json:"default"`
	Slots   map[string]SlotRecord `json:"slots,omitempty"`
	Trial   *nodeapi.TrialResult  `json:"trial,omitempty"`
}

// SlotRecord is what a slot holds: its image, and the kernel arguments it
// boots with (the image's own; CommandLine adds the rest).
type SlotRecord struct {
	nodeapi.SlotImage
	Cmdline []string `json:"cmdline,omitempty"`
	// OneShot: the bootloaders' configs name this slot for one boot (the
	// firmware trial); the saved configs are to be put back.
	OneShot bool `json:"oneShot,omitempty"`
}

// Partition is the boot partition, mounted at Dir.
type Partition struct {
	Dir string
}

// path is a boot partition path (image.SlotFiles, image.SlotsFile...) under
// Dir.
func (p *Partition) path(name string) string { return filepath.Join(p.Dir, filepath.FromSlash(name)) }

// Read reads the slots' state; a partition without one is the build's.
func (p *Partition) Read() (State, error) {
	st := State{Default: image.SlotA}
	b, err := os.ReadFile(p.path(image.SlotsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", image.SlotsFile, err)
	}
	if !image.ValidSlot(st.Default) {
		return st, fmt.Errorf("%s: default slot %q: want a or b", image.SlotsFile, st.Default)
	}
	return st, nil
}

// Write records the slots' state, replacing the file whole.
func (p *Partition) Write(st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSync(p.path(image.SlotsFile), append(b, '\n'))
}

// Install writes a slot's kernel and initramfs from their readers, each
// checked against u's size and sha256 before it replaces the slot's file:
// a short or damaged upload leaves the slot as it was.
func (p *Partition) Install(slot string, u nodeapi.Upgrade, kernel, initrd io.Reader) error {
	if !image.ValidSlot(slot) {
		return fmt.Errorf("slot %q: want a or b", slot)
	}
	kpath, ipath := image.SlotFiles(slot)
	if err := os.MkdirAll(filepath.Dir(p.path(kpath)), 0o755); err != nil {
		return err
	}
	// The slot's old files (and what an interrupted upload left) go
	// first: the partition holds two images, not three.
	for _, f := range []string{kpath, ipath} {
		for _, name := range []string{p.path(f), p.path(f) + ".new"} {
			if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	if err := installFile(p.path(kpath), kernel, u.KernelSize, u.KernelSHA256); err != nil {
		return fmt.Errorf("the kernel: %w", err)
	}
	if err := installFile(p.path(ipath), initrd, u.InitrdSize, u.InitrdSHA256); err != nil {
		return fmt.Errorf("the initramfs: %w", err)
	}
	return nil
}

// installFile copies r to path.new, checks it, syncs it and renames it
// over path.
func installFile(path string, r io.Reader, size int64, sum string) error {
	h := sha256.New()
	return fsutil.ReplaceSynced(path, io.TeeReader(io.LimitReader(r, size+1), h), 0o644, func(n int64) error { return check(n, h, size, sum) })
}

func check(n int64, h hash.Hash, size int64, sum string) error {
	if n != size {
		return fmt.Errorf("%d bytes received, %d announced", n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(got, sum) {
		return fmt.Errorf("sha256 %s, the image says %s: damaged on the way or on the disk", got, sum)
	}
	return nil
}

// Title is a boot entry's title.
func Title(slot string, img nodeapi.SlotImage) string {
	return fmt.Sprintf("kiln slot %s: %s %s", slot, img.Release, img.ImageID)
}

// PointConfigs rewrites both bootloaders' configs to boot slot with
// cmdline's arguments (the image's own; extra are added to both, as a
// trial's marker). With saveOld, the configs there now are kept beside
// them, for RestoreConfigs.
func (p *Partition) PointConfigs(slot string, rec SlotRecord, extra []string, saveOld bool) error {
	kernel, initrd := image.SlotFiles(slot)
	bios := strings.Join(append([]string{image.CommandLine(rec.Cmdline, image.BootQcow2BIOS, slot)}, extra...), " ")
	uefi := strings.Join(append([]string{image.CommandLine(rec.Cmdline, image.BootQcow2UEFI, slot)}, extra...), " ")
	files := []struct {
		name string
		data []byte
	}{
		{image.SyslinuxConfigFile, image.SyslinuxConfig(kernel, initrd, bios)},
		{image.GrubConfigFile, image.GrubConfig(Title(slot, rec.SlotImage), kernel, initrd, uefi)},
	}
	for _, f := range files {
		path := p.path(f.name)
		if saveOld {
			old, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := writeFileSync(path+".saved", old); err != nil {
				return err
			}
		}
		if err := writeFileSync(path, f.data); err != nil {
			return err
		}
	}
	return nil
}

// RestoreConfigs puts back the configs PointConfigs saved; none saved is
// not an error.
func (p *Partition) RestoreConfigs() error {
	for _, name := range []string{image.SyslinuxConfigFile, image.GrubConfigFile} {
		path := p.path(name)
		if _, err := os.Stat(path + ".saved"); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := os.Rename(path+".saved", path); err != nil {
			return err
		}
		if err := fsutil.SyncDir(filepath.Dir(path)); err != nil {
			return err
		}
	}
	return nil
}

// writeFileSync replaces path with data (fsutil.ReplaceSynced).
func writeFileSync(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return fsutil.ReplaceSynced(path, bytes.NewReader(data), 0o644, nil)
}
