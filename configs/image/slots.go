package image

import (
	"fmt"
	"strings"
)

// A disk-booted node (the qcow2 format, or a disk installed from it) has
// two slots on its boot partition, each a kernel and an initramfs. The
// builder fills slot a; an upgrade (kiln upgrade, init/slots) writes the
// slot not booted, boots it once on trial, and makes it the bootloaders'
// default only when the node came up on it. Until then the bootloaders
// still name the slot that worked: a trial that fails, hangs or panics
// ends with a reboot into it.

// Slot names.
const (
	SlotA = "a"
	SlotB = "b"
)

// Paths on the boot partition (FAT, label BootLabel), from its root.
const (
	// BootLabel is the boot partition's FAT label.
	BootLabel = "KILN-BOOT"
	// SyslinuxConfigFile and GrubConfigFile are the BIOS and UEFI
	// bootloaders' configs: both boot the default slot.
	SyslinuxConfigFile = "/syslinux.cfg"
	GrubConfigFile     = "/boot/grub/grub.cfg"
	// SlotsFile records the slots (which image each holds, which is the
	// default) and the last upgrade's trial (init/slots.State).
	SlotsFile = "/kiln/slots.json"
)

// SlotFiles are a slot's kernel and initramfs on the boot partition. Slot
// a's are where the first builds put them, so an image built before slots
// existed is slot a as it stands.
func SlotFiles(slot string) (kernel, initrd string) {
	if slot == SlotB {
		return "/b/vmlinuz", "/b/initrd.img"
	}
	return "/vmlinuz", "/initrd.img"
}

// OtherSlot is the slot that is not slot.
func OtherSlot(slot string) string {
	if slot == SlotB {
		return SlotA
	}
	return SlotB
}

// ValidSlot reports whether s names a slot.
func ValidSlot(s string) bool { return s == SlotA || s == SlotB }

// Kernel command-line keys of the slots.
const (
	// ParamSlot names the slot the node booted from (absent: slot a, or
	// a node that was not booted from a disk).
	ParamSlot = "kiln.slot"
	// ParamTrial marks a boot into a slot on trial (its value is the
	// slot): PID 1 reboots into the default slot if the node is not ready
	// in time, and makes the slot the default once it is.
	ParamTrial = "kiln.trial"
)

// CommandLine is the kernel command line of an image booted with boot (a
// Boot* value) from base, the image's own arguments (its manifest's
// cmdline). A disk boot's state is the disk's partition labelled
// StateLabel, and its slot is named.
func CommandLine(base []string, boot, slot string) string {
	args := append(append([]string{}, base...), Arg(ParamBoot, boot))
	if boot == BootQcow2BIOS || boot == BootQcow2UEFI {
		args = append(args, Arg(ParamStateDisk, StateDiskByLabel))
		if slot != "" {
			args = append(args, Arg(ParamSlot, slot))
		}
	}
	return strings.Join(args, " ")
}

// SyslinuxConfig is a syslinux.cfg or isolinux.cfg that boots kernel and
// initrd with cmdline at once, on the serial console too.
func SyslinuxConfig(kernel, initrd, cmdline string) []byte {
	return []byte(fmt.Sprintf(`SERIAL 0 115200
DEFAULT kiln
PROMPT 0
TIMEOUT 0
LABEL kiln
  KERNEL %s
  INITRD %s
  APPEND %s
`, kernel, initrd, cmdline))
}

// GrubConfig is a grub.cfg with one entry, titled title, that boots kernel
// and initrd with cmdline at once.
func GrubConfig(title, kernel, initrd, cmdline string) []byte {
	return []byte(fmt.Sprintf(`set timeout=0
set default=0
menuentry "%s" {
	linux %s %s
	initrd %s
}
`, title, kernel, cmdline, initrd))
}
