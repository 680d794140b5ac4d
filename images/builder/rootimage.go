package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"kiln/configs/image"
	"kiln/images/initramfs"
	"kiln/images/kernel"
)

// An image boots in two stages (configs/image): the initramfs holds stage
// 1 (bin/kiln-init as /init), the modules it needs and the root image, a
// squashfs of the node's whole root file system, kiln-node included. The
// kernel unpacks the initramfs into RAM it cannot page out, so what is
// there stays small; the root image's pages are read and decompressed on
// demand through the page cache.

// earlyModules are the modules stage 1 loads to mount the root image;
// their dependencies come with them and built-in ones are left out.
var earlyModules = []string{"loop", "squashfs", "overlay"}

// Root image compression. zstd decompresses several times faster than xz
// (it matters under TCG, where every page of kiln-node a component first
// touches is decompressed), and level 19 with 1 MiB blocks comes within a
// few percent of xz's size on these binaries (measured: see README,
// "Image sizes").
var squashfsArgs = []string{"-comp", "zstd", "-Xcompression-level", "19", "-b", "1M"}

// kernelConfigs are what the kernel must have to mount the root image.
var kernelConfigs = []struct{ symbol, why string }{
	{"CONFIG_SQUASHFS", "the root image is a squashfs"},
	{"CONFIG_SQUASHFS_ZSTD", "the root image is zstd-compressed"},
	{"CONFIG_BLK_DEV_LOOP", "stage 1 mounts the root image through a loop device"},
	{"CONFIG_OVERLAY_FS", "/etc is an overlay on the read-only root"},
}

// checkKernel fails the build when the kernel cannot mount the root image.
func checkKernel(k *kernel.Kernel) error {
	for _, c := range kernelConfigs {
		v, ok, err := k.Config(c.symbol)
		if err != nil {
			return fmt.Errorf("kernel %s: reading its config: %w", k.Release, err)
		}
		if !ok || (v != "y" && v != "m") {
			return fmt.Errorf("kernel %s lacks %s (%s): use a Debian cloud or generic kernel", k.Release, c.symbol, c.why)
		}
	}
	return nil
}

// rootImage is a root image written by writeRootImage.
type rootImage struct {
	path   string
	sha256 string
	files  int
	raw    int64 // bytes of the regular files in it
	size   int64 // bytes of the image
}

// writeRootImage lays the root tree out under tmp and packs it into a
// squashfs with mksquashfs, reproducibly: every file owned by root, every
// time 0, entries in sorted order whatever the number of threads.
func writeRootImage(ctx context.Context, a *initramfs.Archive, tmp string) (*rootImage, error) {
	stage := filepath.Join(tmp, "root")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	files, raw, err := a.WriteDir(stage)
	if err != nil {
		return nil, err
	}
	out := filepath.Join(tmp, "root.squashfs")
	args := append([]string{stage, out, "-noappend", "-quiet", "-no-progress", "-no-xattrs", "-no-exports",
		"-all-root", "-all-time", "0", "-mkfs-time", "0"}, squashfsArgs...)
	cmd := exec.CommandContext(ctx, "mksquashfs", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mksquashfs: %v: %s", err, strings.TrimSpace(string(b)))
	}
	sum, size, err := sha256File(out)
	if err != nil {
		return nil, err
	}
	return &rootImage{path: out, sha256: sum, files: files, raw: raw, size: size}, nil
}

func sha256File(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// stage1Archive is the initramfs: stage 1, its modules, the root image
// and its checksum.
func stage1Archive(k *kernel.Kernel, initBinary string, root *rootImage) (*initramfs.Archive, []string, error) {
	a := initramfs.New()
	for _, d := range []string{"dev", "proc", "sys", strings.TrimPrefix(image.SysRoot, "/")} {
		a.Dir(d, 0o755)
	}
	a.AddDevConsole()
	a.FileFrom("init", initBinary, 0o755)
	a.FileFrom(image.RootImageFile, root.path, 0o600)
	a.File(image.RootImageSumFile, []byte(root.sha256+"\n"), 0o644)

	files, err := k.ModuleClosure(earlyModules...)
	if err != nil {
		return nil, nil, fmt.Errorf("stage 1 modules: %w", err)
	}
	modDir := path.Join("lib/modules", k.Release)
	var names []string
	for _, rel := range files {
		a.FileFrom(path.Join(modDir, rel), filepath.Join(k.ModulesDir, filepath.FromSlash(rel)), 0o644)
		names = append(names, kernel.ModuleName(rel))
	}
	// kmod.Load needs only these two of the index files.
	for _, f := range []string{"modules.dep", "modules.builtin"} {
		a.FileFrom(path.Join(modDir, f), filepath.Join(k.ModulesDir, f), 0o644)
	}
	a.File(image.EarlyModulesFile, lines(names), 0o644)
	return a, names, nil
}
