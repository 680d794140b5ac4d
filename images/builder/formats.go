package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"kiln/configs/image"
	"kiln/configs/node"
)

// Image is what a format builds from: the kernel and initramfs already in
// OutDir, and the settings of the request.
type Image struct {
	Role      node.Role
	ID        string // hash of the kernel and the initramfs
	OutDir    string
	Vmlinuz   string // OutDir/vmlinuz
	Initramfs string // OutDir/initramfs.img
	Cmdline   []string
	DiskSize  int64
	// TmpDir is a scratch directory, removed after the build.
	TmpDir string

	grubEFI string // built once, shared by iso and qcow2
}

// CommandLine is the kernel command line for one boot method: Cmdline
// plus kiln.boot=<boot>, so PID 1 (and the tests) know how the node booted.
//
// A qcow2 disk carries its own state partition (ext4, labelled
// image.StateLabel), so its boot entries also name it with kiln.statedisk=: the
// same image booted from ISO, PXE or -kernel stays diskless unless its
// config says otherwise.
func (img *Image) CommandLine(boot string) string {
	slot := ""
	if boot == image.BootQcow2BIOS || boot == image.BootQcow2UEFI {
		slot = image.SlotA // the build fills slot a (image.SlotFiles)
	}
	return image.CommandLine(img.Cmdline, boot, slot)
}

// Builder writes one format into img.OutDir and returns the paths of the
// files it wrote.
type Builder func(ctx context.Context, img *Image) ([]string, error)

// Format is one entry of the registry.
type Format struct {
	Name string
	// Help is one line for "kiln build --help".
	Help string
	// Needs are the host programs (names looked up in $PATH, /usr/sbin
	// and /sbin) and files the builder uses, checked before a build
	// starts.
	Needs []string
	Build Builder
}

// registry is the registry of output formats, in build order. Adding a
// format is adding an entry.
var registry = []Format{
	{
		Name:  "kernel",
		Help:  "vmlinuz + initramfs.img + cmdline, for direct boot (qemu -kernel, kexec)",
		Build: buildKernel,
	},
	{
		Name: "iso",
		Help: "<role>.iso: hybrid ISO, BIOS (isolinux) and UEFI (GRUB) from CD or USB",
		Needs: []string{"xorriso", "grub-mkstandalone", "mformat", "mmd", "mcopy",
			isohdpfx, isolinuxBin, ldlinuxC32, grubEFIDir},
		Build: buildISO,
	},
	{
		Name: "qcow2",
		Help: "<role>.qcow2: disk with a FAT boot partition (syslinux, GRUB for UEFI) and an ext4 state partition",
		Needs: []string{"qemu-img", "mformat", "mmd", "mcopy", "syslinux", "mke2fs", "grub-mkstandalone",
			syslinuxMBR, grubEFIDir},
		Build: buildQcow2,
	},
	{
		Name:  "pxe",
		Help:  "pxe/{vmlinuz,initramfs.img,boot.ipxe}: iPXE script with relative paths, for TFTP or HTTP",
		Build: buildPXE,
	},
}

// Formats returns the registered formats, in build order (a copy: the
// registry itself is fixed at compile time).
func Formats() []Format { return append([]Format(nil), registry...) }

// FormatNames lists the registered formats.
func FormatNames() []string {
	names := make([]string, len(registry))
	for i, f := range registry {
		names[i] = f.Name
	}
	return names
}

// lookupFormats returns the named formats in registry order, each once
// (nil or empty names: all).
func lookupFormats(names []string) ([]Format, error) {
	if len(names) == 0 {
		return registry, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		found := false
		for _, f := range registry {
			found = found || f.Name == n
		}
		if !found {
			return nil, fmt.Errorf("unknown format %q (want one or more of %s)", n, strings.Join(FormatNames(), ", "))
		}
		want[n] = true
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("no format given (want one or more of %s)", strings.Join(FormatNames(), ", "))
	}
	var out []Format
	for _, f := range registry {
		if want[f.Name] {
			out = append(out, f)
		}
	}
	return out, nil
}

// checkHostTools checks that the formats' host programs and files exist.
func checkHostTools(formats []Format) error {
	var missing []string
	seen := map[string]bool{}
	for _, f := range formats {
		for _, n := range f.Needs {
			if seen[n] {
				continue
			}
			seen[n] = true
			if strings.HasPrefix(n, "/") {
				if _, err := os.Stat(n); err != nil {
					missing = append(missing, fmt.Sprintf("%s (for %s)", n, f.Name))
				}
				continue
			}
			if _, err := lookTool(n); err != nil {
				missing = append(missing, fmt.Sprintf("%s (for %s)", n, f.Name))
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing on this host: %s; run scripts/install-deps.sh (make deps)", strings.Join(missing, ", "))
	}
	return nil
}

// lookTool finds a program in $PATH, then in /usr/sbin and /sbin (root's
// PATH in containers often lacks them).
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// sourceDateEpoch is handed to the tools that honour SOURCE_DATE_EPOCH
// (xorriso, mke2fs via E2FSPROGS_FAKE_TIME) so that their time stamps do
// not depend on when the image was built: 2024-01-01T00:00:00Z.
const sourceDateEpoch = "1704067200"

// runTool runs a host program and returns an error carrying its output.
func runTool(ctx context.Context, name string, args ...string) error {
	p, err := lookTool(name)
	if err != nil {
		return fmt.Errorf("%w (run scripts/install-deps.sh)", err)
	}
	cmd := exec.CommandContext(ctx, p, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "SOURCE_DATE_EPOCH="+sourceDateEpoch,
		"E2FSPROGS_FAKE_TIME="+sourceDateEpoch, "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		s := strings.TrimSpace(string(out))
		if len(s) > 4000 {
			s = "..." + s[len(s)-4000:]
		}
		if ctx.Err() != nil {
			err = errors.Join(ctx.Err(), err)
		}
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, s)
	}
	return nil
}

// buildKernel: the boot files are already in OutDir; add the command line.
func buildKernel(_ context.Context, img *Image) ([]string, error) {
	cmdline := filepath.Join(img.OutDir, image.CmdlineFile)
	if err := os.WriteFile(cmdline, []byte(img.CommandLine(image.BootKernel)+"\n"), 0o644); err != nil {
		return nil, err
	}
	return []string{img.Vmlinuz, img.Initramfs, cmdline}, nil
}

// buildPXE writes pxe/: the kernel, the initramfs and an iPXE script that
// names them relative to its own URL. Served by any TFTP or HTTP server
// (QEMU's built-in TFTP with bootfile=boot.ipxe, "kiln pxe serve"), it
// boots machines whose firmware is iPXE (QEMU's NIC ROMs, or iPXE
// chain-loaded from a plain PXE ROM: undionly.kpxe / ipxe.efi, Debian's
// ipxe package).
func buildPXE(_ context.Context, img *Image) ([]string, error) {
	dir := filepath.Join(img.OutDir, image.PXEDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	vmlinuz := filepath.Join(dir, image.KernelFile)
	initrd := filepath.Join(dir, image.InitramfsFile)
	if err := linkOrCopy(vmlinuz, img.Vmlinuz, 0o644); err != nil {
		return nil, err
	}
	if err := linkOrCopy(initrd, img.Initramfs, FileMode(img.Role)); err != nil {
		return nil, err
	}
	// initrd=initramfs.img on the kernel line is what a UEFI iPXE needs
	// to hand the initrd to the kernel's EFI stub; BIOS ignores it.
	script := fmt.Sprintf(`#!ipxe
# kiln %s image %s. The paths are relative to this script's URL, so the
# directory can be served over TFTP (bootfile boot.ipxe) or HTTP as it is.
echo kiln: loading %s image %s
kernel vmlinuz initrd=initramfs.img %s
initrd initramfs.img
boot
`, img.Role, img.ID, img.Role, img.ID, img.CommandLine(image.BootPXE))
	bootIPXE := filepath.Join(dir, image.PXEScript)
	if err := os.WriteFile(bootIPXE, []byte(script), 0o644); err != nil {
		return nil, err
	}
	return []string{vmlinuz, initrd, bootIPXE}, nil
}
