// Package blkdev tells what a block device holds from its first and last
// bytes (file system type and label, partition table, blank), without
// blkid, and lists the machine's block devices. PID 1 uses it to find a
// config drive by label and to decide whether a state disk may be
// formatted.
package blkdev

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Probe is what the first and last bytes of a block device say about it.
type Probe struct {
	// Type is the file system or partition table found: "ext4" (also ext2
	// and ext3: the ext4 driver mounts them), "vfat", "iso9660", "xfs",
	// "btrfs", "swap", "luks", "lvm2", "squashfs", "gpt", "dos" (an MBR
	// partition table), "data" (something unrecognized), or "" when the
	// device is blank.
	Type string
	// Label is the file system's label, if it has one.
	Label string
}

// Blank reports whether the device holds nothing: no signature, and only
// zeros in the regions where file systems and partition tables keep theirs.
func (p Probe) Blank() bool { return p.Type == "" }

// MountType is the type to pass to mount(2), or "" if the kernel cannot
// mount it.
func (p Probe) MountType() string {
	switch p.Type {
	case "ext4", "vfat", "iso9660", "xfs", "btrfs", "squashfs":
		return p.Type
	}
	return ""
}

func (p Probe) String() string {
	switch {
	case p.Blank():
		return "blank"
	case p.Type == "data":
		return "unrecognized data"
	case p.Type == "gpt" || p.Type == "dos":
		return "a " + p.Type + " partition table"
	case p.Label != "":
		return fmt.Sprintf("an %s file system labelled %q", p.Type, p.Label)
	}
	return "an " + p.Type + " file system"
}

// Regions read by probe: file systems and partition tables keep their
// signatures in the first MiB (btrfs at 64 KiB, ISO 9660 at 32 KiB) or at
// the very end (the backup GPT, md and ZFS labels).
const (
	headSize = 1 << 20
	tailSize = 128 << 10
)

// probe reads a device (or image file) of the given size.
func probe(r io.ReaderAt, size int64) (Probe, error) {
	head := make([]byte, min(size, headSize))
	if _, err := r.ReadAt(head, 0); err != nil && err != io.EOF {
		return Probe{}, err
	}
	if p, ok := identify(head); ok {
		return p, nil
	}
	if !allZero(head) {
		return Probe{Type: "data"}, nil
	}
	if size > headSize {
		n := min(size-headSize, tailSize)
		tail := make([]byte, n)
		if _, err := r.ReadAt(tail, size-n); err != nil && err != io.EOF {
			return Probe{}, err
		}
		if !allZero(tail) {
			return Probe{Type: "data"}, nil
		}
	}
	return Probe{}, nil
}

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), 4096)
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

var zeros [4096]byte

// at returns b[off:off+n] or nil when b is too short.
func at(b []byte, off, n int) []byte {
	if off+n > len(b) {
		return nil
	}
	return b[off : off+n]
}

func cstr(b []byte) string { return strings.TrimSpace(string(bytes.TrimRight(b, "\x00"))) }

// identify recognizes the signatures kiln cares about in a device's first
// MiB.
func identify(h []byte) (Probe, bool) {
	// ext2/3/4: superblock at 1024, magic 0xEF53 at offset 0x38, volume
	// name at 0x78.
	if m := at(h, 1024+0x38, 2); m != nil && binary.LittleEndian.Uint16(m) == 0xEF53 {
		return Probe{Type: "ext4", Label: cstr(at(h, 1024+0x78, 16))}, true
	}
	// ISO 9660: primary volume descriptor at 32 KiB, "CD001", volume id
	// at offset 40.
	if bytes.Equal(at(h, 32769, 5), []byte("CD001")) {
		return Probe{Type: "iso9660", Label: cstr(at(h, 32768+40, 32))}, true
	}
	switch {
	case bytes.Equal(at(h, 0, 4), []byte("XFSB")):
		return Probe{Type: "xfs", Label: cstr(at(h, 108, 12))}, true
	case bytes.Equal(at(h, 0, 6), []byte("LUKS\xba\xbe")):
		return Probe{Type: "luks"}, true
	case bytes.Equal(at(h, 0, 4), []byte("hsqs")):
		return Probe{Type: "squashfs"}, true
	case bytes.Equal(at(h, 65536+64, 8), []byte("_BHRfS_M")):
		return Probe{Type: "btrfs", Label: cstr(at(h, 65536+0x12b, 256))}, true
	case bytes.Equal(at(h, 4096-10, 10), []byte("SWAPSPACE2")):
		return Probe{Type: "swap"}, true
	case bytes.Equal(at(h, 512, 8), []byte("LABELONE")):
		return Probe{Type: "lvm2"}, true
	case bytes.Equal(at(h, 512, 8), []byte("EFI PART")):
		return Probe{Type: "gpt"}, true
	}
	if bytes.Equal(at(h, 510, 2), []byte{0x55, 0xaa}) {
		// A FAT boot sector names its type at 0x36 (FAT12/16) or 0x52
		// (FAT32), its label 11 bytes before.
		for _, off := range []int{0x52, 0x36} {
			if strings.HasPrefix(string(at(h, off, 8)), "FAT") {
				label := cstr(at(h, off-0x0b, 11))
				if label == "NO NAME" {
					label = ""
				}
				return Probe{Type: "vfat", Label: label}, true
			}
		}
		return Probe{Type: "dos"}, true
	}
	return Probe{}, false
}

// ProbeDevice probes a block device by path.
func ProbeDevice(dev string) (Probe, error) {
	f, err := os.Open(dev)
	if err != nil {
		return Probe{}, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Probe{}, err
	}
	if size == 0 {
		return Probe{}, fmt.Errorf("%s: no medium (size 0)", dev)
	}
	return probe(f, size)
}

// Device is a block device found in sysfs.
type Device struct {
	Name string // vda, vda1, sr0
	Path string // /dev/vda
}

// List lists the block devices under sysClassBlock (/sys/class/block)
// worth looking at for a config drive or a state disk label, sorted by name.
// RAM disks, loop devices and zram are left out.
func List(sysClassBlock, devDir string) []Device {
	ents, err := os.ReadDir(sysClassBlock)
	if err != nil {
		return nil
	}
	var out []Device
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "loop") || strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "zram") {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(sysClassBlock, n, "size")); err == nil {
			if s, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); s == 0 {
				continue // an empty CD-ROM drive
			}
		}
		out = append(out, Device{Name: n, Path: filepath.Join(devDir, n)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// FindByLabel returns the devices whose file system label is label (case
// does not matter: FAT labels are upper case).
func FindByLabel(devs []Device, label string) []Device {
	var out []Device
	for _, d := range devs {
		p, err := ProbeDevice(d.Path)
		if err == nil && p.Label != "" && strings.EqualFold(p.Label, label) {
			out = append(out, d)
		}
	}
	return out
}
