package builder

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"kiln/configs/image"
	"os"
	"path/filepath"
)

// The qcow2 disk's layout (MBR partition table, 512-byte sectors):
//
//	sector 0      syslinux's MBR boot code (boots the active partition)
//	partition 1   FAT32, label KILN-BOOT, active, from 1 MiB: syslinux
//	              (ldlinux.sys/.c32, syslinux.cfg), /vmlinuz,
//	              /initrd.img, EFI/BOOT/BOOTX64.EFI + /boot/grub/grub.cfg
//	              for UEFI firmware, and the image's marker file
//	partition 2   ext4, label "kiln-state" (image.StateLabel), the rest of the
//	              disk: the node's state
//
// How PID 1 finds its state: it looks for the file system labelled
// kiln-state (the ext4 superblock's volume name, at byte 1024+120 of each
// block device and partition in /sys/class/block, or blkid's LABEL=), checks
// it with e2fsck -p and mounts it at /var/lib. The build makes it, so the
// first boot needs no formatting and nothing is guessed: a disk without
// that label is never written. Booted from the ISO or over PXE with a blank
// disk attached, PID 1 may format a disk the config names (mke2fs -L
// kiln-state) and find it the same way from then on; without one it keeps
// its state on tmpfs. The qcow2 file is sparse: the state partition takes
// no room until the node writes to it.
const (
	sectorSize = 512
	mib        = 1 << 20
	bootStart  = 1 * mib // partition 1 offset (aligned)
)

// diskLayout is where the partitions go.
type diskLayout struct {
	size                  int64 // whole disk
	bootOffset, bootSize  int64
	stateOffset, stateLen int64
}

// planDisk sizes the boot partition for the files it holds (twice over, so
// that a new kernel and initramfs fit next to the old ones during an
// upgrade; 128 MiB at least) and gives the state partition the rest.
func planDisk(diskSize, payload int64) (diskLayout, error) {
	boot := (2*payload + 16*mib + mib - 1) / mib * mib
	if boot < 128*mib {
		boot = 128 * mib
	}
	l := diskLayout{size: diskSize / mib * mib, bootOffset: bootStart, bootSize: boot}
	l.stateOffset = l.bootOffset + l.bootSize
	l.stateLen = l.size - l.stateOffset
	if l.stateLen < 256*mib {
		return l, fmt.Errorf("disk size %d MiB too small: the boot partition needs %d MiB and the state partition at least 256 MiB",
			diskSize/mib, boot/mib)
	}
	return l, nil
}

// buildQcow2 writes <role>.qcow2 (see the layout above): a raw disk made
// with mtools, syslinux --offset and mke2fs -E offset= (no loop mounts),
// converted with qemu-img. BIOS: MBR code → active FAT partition →
// syslinux → kernel with kiln.boot=qcow2-bios. UEFI: the firmware runs
// EFI/BOOT/BOOTX64.EFI from the FAT partition → GRUB → kiln.boot=qcow2-uefi.
func buildQcow2(ctx context.Context, img *Image) ([]string, error) {
	efi, err := img.buildGrubEFI(ctx)
	if err != nil {
		return nil, err
	}
	payload := fileSize(img.Vmlinuz) + fileSize(img.Initramfs) + fileSize(efi)
	l, err := planDisk(img.DiskSize, payload)
	if err != nil {
		return nil, err
	}
	raw := filepath.Join(img.TmpDir, "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(l.size); err != nil {
		f.Close()
		return nil, err
	}
	mbrCode, err := os.ReadFile(syslinuxMBR)
	if err != nil {
		f.Close()
		return nil, err
	}
	idBytes, _ := hex.DecodeString(img.ID)
	mbr, err := makeMBR(mbrCode, binary.LittleEndian.Uint32(idBytes[:4]), []mbrPartition{
		{active: true, typ: 0x0c, start: l.bootOffset, size: l.bootSize}, // FAT32 (LBA)
		{typ: 0x83, start: l.stateOffset, size: l.stateLen},              // Linux
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.WriteAt(mbr, 0); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}

	// Boot partition.
	fat := fmt.Sprintf("%s@@%d", raw, l.bootOffset)
	kernelA, initrdA := image.SlotFiles(image.SlotA)
	stage := filepath.Join(img.TmpDir, "qcow2")
	cfgs := map[string][]byte{
		"syslinux.cfg":       img.syslinuxConfig(image.BootQcow2BIOS, kernelA, initrdA),
		"grub.cfg":           img.grubConfig(image.BootQcow2UEFI, kernelA, initrdA),
		"marker":             img.marker(),
		"boot-partition.txt": []byte(fmt.Sprintf("kiln %s image %s: boot partition. The node's state is on the partition labelled %s.\n", img.Role, img.ID, image.StateLabel)),
	}
	for name, data := range cfgs {
		if err := writeStaged(stage, name, data); err != nil {
			return nil, err
		}
	}
	if err := runTool(ctx, "mformat", "-i", fat, "-F", "-T", fmt.Sprint(l.bootSize/sectorSize),
		"-H", fmt.Sprint(l.bootOffset/sectorSize), "-h", "255", "-s", "63",
		"-v", image.BootLabel, "-N", img.ID[:8], "::"); err != nil {
		return nil, err
	}
	if err := runTool(ctx, "mmd", "-i", fat, "::/EFI", "::/EFI/BOOT", "::/boot", "::/boot/grub", "::/kiln"); err != nil {
		return nil, err
	}
	for _, c := range [][2]string{
		{img.Vmlinuz, "::" + kernelA},
		{img.Initramfs, "::" + initrdA},
		{filepath.Join(stage, "syslinux.cfg"), "::" + image.SyslinuxConfigFile},
		{filepath.Join(stage, "boot-partition.txt"), "::/README.txt"},
		{efi, "::/EFI/BOOT/BOOTX64.EFI"},
		{filepath.Join(stage, "grub.cfg"), "::" + image.GrubConfigFile},
		{filepath.Join(stage, "marker"), "::" + img.markerPath()},
	} {
		if err := runTool(ctx, "mcopy", "-i", fat, c[0], c[1]); err != nil {
			return nil, err
		}
	}
	// syslinux's mtools installer: ldlinux.sys/.c32 into the FAT and its
	// boot sector, at the partition's offset in the disk file.
	if err := runTool(ctx, "syslinux", "--offset", fmt.Sprint(l.bootOffset), "--install", raw); err != nil {
		return nil, err
	}

	// State partition: ext4 labelled kiln-state, made in place. A fixed
	// UUID and hash seed (from the image ID) and a fixed time keep it a
	// function of the inputs.
	uuid := stableUUID(image.StateLabel + "/" + img.ID)
	if err := runTool(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-L", image.StateLabel, "-U", uuid,
		"-E", fmt.Sprintf("offset=%d,hash_seed=%s,root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1,nodiscard", l.stateOffset, uuid),
		raw, fmt.Sprintf("%dk", l.stateLen/1024)); err != nil {
		return nil, err
	}

	out := filepath.Join(img.OutDir, image.Qcow2File(string(img.Role)))
	tmp := filepath.Join(img.TmpDir, "disk.qcow2")
	if err := runTool(ctx, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp); err != nil {
		return nil, err
	}
	os.Remove(raw)
	if err := placeFile(tmp, out, img.Role); err != nil {
		return nil, err
	}
	return []string{out}, nil
}

// stableUUID derives a version-4-shaped UUID from a string.
func stableUUID(seed string) string {
	h := sha256.Sum256([]byte(seed))
	h[6] = h[6]&0x0f | 0x40
	h[8] = h[8]&0x3f | 0x80
	x := hex.EncodeToString(h[:16])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

// mbrPartition is one primary partition (byte offsets, sector-aligned).
type mbrPartition struct {
	active      bool
	typ         byte
	start, size int64
}

// makeMBR returns sector 0: boot code (up to 440 bytes), disk signature,
// up to four partition entries and the 0x55AA signature.
func makeMBR(code []byte, signature uint32, parts []mbrPartition) ([]byte, error) {
	if len(code) > 440 {
		code = code[:440]
	}
	if len(parts) > 4 {
		return nil, fmt.Errorf("MBR: %d partitions (4 at most)", len(parts))
	}
	b := make([]byte, sectorSize)
	copy(b, code)
	binary.LittleEndian.PutUint32(b[440:], signature)
	for i, p := range parts {
		if p.start%sectorSize != 0 || p.size%sectorSize != 0 {
			return nil, fmt.Errorf("MBR: partition %d not sector-aligned", i+1)
		}
		lba, n := p.start/sectorSize, p.size/sectorSize
		if lba+n > 0xffffffff {
			return nil, fmt.Errorf("MBR: partition %d ends beyond 2 TiB", i+1)
		}
		e := b[446+16*i : 446+16*(i+1)]
		if p.active {
			e[0] = 0x80
		}
		copy(e[1:4], chs(lba))
		e[4] = p.typ
		copy(e[5:8], chs(lba+n-1))
		binary.LittleEndian.PutUint32(e[8:], uint32(lba))
		binary.LittleEndian.PutUint32(e[12:], uint32(n))
	}
	b[510], b[511] = 0x55, 0xaa
	return b, nil
}

// chs encodes an LBA as cylinder/head/sector with 255 heads and 63 sectors
// a track, or the "use LBA" maximum beyond 8 GiB.
func chs(lba int64) []byte {
	const heads, sectors = 255, 63
	c := lba / (heads * sectors)
	if c > 1023 {
		return []byte{0xfe, 0xff, 0xff}
	}
	h := (lba / sectors) % heads
	s := lba%sectors + 1
	return []byte{byte(h), byte(s) | byte((c>>2)&0xc0), byte(c)}
}
