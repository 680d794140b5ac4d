package slots

import (
	"fmt"
	"os"
	"strings"

	"github.com/u-root/u-root/pkg/boot/kexec"
	"golang.org/x/sys/unix"

	"kiln/configs/image"
	"kiln/init/boot/blkdev"
)

// MountDir is where PID 1 mounts the boot partition while it uses it.
const MountDir = "/run/kiln/boot"

// Mount finds the partition labelled image.BootLabel and mounts it at
// dir; Unmount undoes it. Two partitions with the label (a second kiln
// disk attached) are refused: which one the firmware booted is unknown.
func Mount(dir string) (*Partition, error) {
	devs := blkdev.FindByLabel(blkdev.List("/sys/class/block", "/dev"), image.BootLabel)
	switch len(devs) {
	case 0:
		return nil, fmt.Errorf("no partition labelled %s: this node was not booted from a kiln disk", image.BootLabel)
	case 1:
	default:
		var names []string
		for _, d := range devs {
			names = append(names, d.Path)
		}
		return nil, fmt.Errorf("%d partitions labelled %s (%s): detach the disks this node does not boot from", len(devs), image.BootLabel, strings.Join(names, ", "))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount(devs[0].Path, dir, "vfat", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "umask=077"); err != nil {
		return nil, fmt.Errorf("mounting the boot partition %s on %s: %w", devs[0].Path, dir, err)
	}
	return &Partition{Dir: dir}, nil
}

// Unmount syncs and unmounts the partition.
func (p *Partition) Unmount() error {
	unix.Sync()
	if err := unix.Unmount(p.Dir, 0); err != nil {
		return fmt.Errorf("unmounting the boot partition: %w", err)
	}
	return nil
}

// LoadKexec loads slot's kernel and initramfs with cmdline as the kernel
// the next kexec reboot starts (kexec_file_load: the running kernel
// checks the image, and Debian's kernels accept unsigned ones unless
// Secure Boot locks them down).
func (p *Partition) LoadKexec(slot, cmdline string) error {
	kpath, ipath := image.SlotFiles(slot)
	k, err := os.Open(p.path(kpath))
	if err != nil {
		return err
	}
	defer k.Close()
	i, err := os.Open(p.path(ipath))
	if err != nil {
		return err
	}
	defer i.Close()
	return kexec.FileLoad(k, i, cmdline)
}
