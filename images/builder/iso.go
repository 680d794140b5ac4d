package builder

import (
	"context"
	"fmt"
	"kiln/configs/image"
	"kiln/internal/fsutil"
	"os"
	"path/filepath"
	"strings"
)

// Boot loader files from Debian packages (scripts/install-deps.sh).
const (
	isohdpfx    = "/usr/lib/ISOLINUX/isohdpfx.bin"             // isolinux: hybrid MBR
	isolinuxBin = "/usr/lib/ISOLINUX/isolinux.bin"             // isolinux: El Torito boot image
	ldlinuxC32  = "/usr/lib/syslinux/modules/bios/ldlinux.c32" // syslinux-common
	syslinuxMBR = "/usr/lib/syslinux/mbr/mbr.bin"              // syslinux-common: MBR boot code
	grubEFIDir  = "/usr/lib/grub/x86_64-efi"                   // grub-efi-amd64-bin
)

// grubModules go into the standalone GRUB EFI binary (with their
// dependencies): enough to find the image's file system on a CD, a
// hybrid-ISO USB stick or an MBR disk, and to boot Linux.
var grubModules = []string{
	"normal", "configfile", "search", "search_fs_file", "search_label", "echo", "test", "minicmd",
	"iso9660", "fat", "part_msdos", "part_gpt", "linux", "boot", "gzio", "efi_gop", "efi_uga",
}

// markerPath is a file only this image has: the UEFI boot loader finds the
// image's file system (ISO 9660 or the disk's FAT boot partition) by it,
// whatever the device is called.
func (img *Image) markerPath() string { return "/kiln/" + img.ID }

func (img *Image) marker() []byte {
	return []byte(fmt.Sprintf("kiln %s image %s\n", img.Role, img.ID))
}

// buildGrubEFI makes BOOTX64.EFI once per build: a standalone GRUB whose
// embedded config finds the file system holding markerPath and runs its
// /boot/grub/grub.cfg (written by each format, with its kiln.boot=).
func (img *Image) buildGrubEFI(ctx context.Context) (string, error) {
	if img.grubEFI != "" {
		return img.grubEFI, nil
	}
	dir := filepath.Join(img.TmpDir, "grub")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	embedded := filepath.Join(dir, "embedded.cfg")
	cfg := fmt.Sprintf(`search --no-floppy --set=root --file %s
set prefix=($root)/boot/grub
configfile ($root)/boot/grub/grub.cfg
echo "kiln: %s not found on any device"
`, img.markerPath(), img.markerPath())
	if err := os.WriteFile(embedded, []byte(cfg), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "BOOTX64.EFI")
	mods := strings.Join(grubModules, " ")
	if err := runTool(ctx, "grub-mkstandalone", "--format=x86_64-efi", "--output="+out,
		"--directory="+grubEFIDir, "--locales=", "--fonts=", "--themes=",
		"--install-modules="+mods, "--modules="+mods,
		"boot/grub/grub.cfg="+embedded); err != nil {
		return "", err
	}
	img.grubEFI = out
	return out, nil
}

// grubConfig is /boot/grub/grub.cfg on the image's file system.
func (img *Image) grubConfig(boot, vmlinuz, initrd string) []byte {
	return image.GrubConfig(fmt.Sprintf("kiln %s %s", img.Role, img.ID), vmlinuz, initrd, img.CommandLine(boot))
}

// syslinuxConfig is an isolinux.cfg or syslinux.cfg.
func (img *Image) syslinuxConfig(boot, vmlinuz, initrd string) []byte {
	return image.SyslinuxConfig(vmlinuz, initrd, img.CommandLine(boot))
}

// buildISO writes <role>.iso, a hybrid ISO 9660 image (CD or USB stick):
//
//   - BIOS: El Torito boots isolinux (no emulation), which loads
//     /boot/vmlinuz and /boot/initrd.img with kiln.boot=iso-bios; the
//     isohybrid MBR (isohdpfx.bin) does the same from a USB stick.
//   - UEFI: the second El Torito entry is an EFI System Partition image
//     (/boot/efi.img, FAT made with mtools) holding
//     EFI/BOOT/BOOTX64.EFI, a standalone GRUB that finds the ISO by its
//     marker file and boots the same kernel with kiln.boot=iso-uefi;
//     -isohybrid-gpt-basdat exposes it as a partition for USB sticks.
//
// The kernel and the initramfs are grafted from OutDir, not copied.
func buildISO(ctx context.Context, img *Image) ([]string, error) {
	stage := filepath.Join(img.TmpDir, "iso")
	efi, err := img.buildGrubEFI(ctx)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"isolinux/isolinux.cfg": img.syslinuxConfig("iso-bios", "/boot/vmlinuz", "/boot/initrd.img"),
		"boot/grub/grub.cfg":    img.grubConfig("iso-uefi", "/boot/vmlinuz", "/boot/initrd.img"),
		img.markerPath()[1:]:    img.marker(),
	}
	for name, data := range files {
		if err := writeStaged(stage, name, data); err != nil {
			return nil, err
		}
	}
	for name, src := range map[string]string{
		"isolinux/isolinux.bin": isolinuxBin,
		"isolinux/ldlinux.c32":  ldlinuxC32,
		"EFI/BOOT/BOOTX64.EFI":  efi,
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(stage, name)), 0o755); err != nil {
			return nil, err
		}
		if _, err := fsutil.CopyFile(filepath.Join(stage, name), src, 0o644); err != nil {
			return nil, err
		}
	}
	espImg := filepath.Join(stage, "boot", "efi.img")
	if err := makeESP(ctx, espImg, efi); err != nil {
		return nil, err
	}

	out := filepath.Join(img.OutDir, image.ISOFile(string(img.Role)))
	tmp := filepath.Join(img.TmpDir, "image.iso")
	if err := runTool(ctx, "xorriso", "-as", "mkisofs",
		"-o", tmp,
		"-V", strings.ToUpper("KILN_"+string(img.Role)),
		"-iso-level", "3", "-R", "-J", "-joliet-long",
		"-isohybrid-mbr", isohdpfx,
		"-c", "isolinux/boot.cat",
		"-b", "isolinux/isolinux.bin", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
		"-eltorito-alt-boot",
		"-e", "boot/efi.img", "-no-emul-boot", "-isohybrid-gpt-basdat",
		"-graft-points",
		stage,
		"/boot/vmlinuz="+img.Vmlinuz,
		"/boot/initrd.img="+img.Initramfs,
	); err != nil {
		return nil, err
	}
	if err := placeFile(tmp, out, img.Role); err != nil {
		return nil, err
	}
	return []string{out}, nil
}

// makeESP writes a FAT image holding EFI/BOOT/BOOTX64.EFI (mtools: no loop
// mount, no root).
func makeESP(ctx context.Context, path, efi string) error {
	const mib = 1 << 20
	size := (fileSize(efi) + 512<<10 + mib - 1) / mib * mib
	if size < 2*mib {
		size = 2 * mib
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := runTool(ctx, "mformat", "-i", path, "-T", fmt.Sprint(size/512), "-h", "64", "-s", "32",
		"-v", "KILN-EFI", "-N", "4b494c4e", "::"); err != nil {
		return err
	}
	if err := runTool(ctx, "mmd", "-i", path, "::/EFI", "::/EFI/BOOT"); err != nil {
		return err
	}
	return runTool(ctx, "mcopy", "-i", path, efi, "::/EFI/BOOT/BOOTX64.EFI")
}

func writeStaged(stage, name string, data []byte) error {
	p := filepath.Join(stage, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}
