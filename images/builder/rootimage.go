package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"kiln/configs/image"
	"kiln/images/initramfs"
	"kiln/images/kernel"
	"kiln/internal/fsutil"
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
	path  string
	CRC32 uint32 `json:"crc32"`
	Files int    `json:"files"`
	Raw   int64  `json:"rawBytes"` // bytes of the regular files in it
	Size  int64  `json:"bytes"`    // bytes of the image
}

// rootImageCache keeps this many root images (the newest used).
const rootImageCache = 8

// rootImageCacheFormat names the layout of a cache entry's JSON.
const rootImageCacheFormat = "kiln root image cache v2 (crc32)"

// cachedRootImage returns the root image of the tree a: from cacheDir when
// a build made it before (same contents, same mksquashfs and arguments:
// the image holds nothing of a cluster's, see image.EtcDir), else made
// now by writeRootImage and kept there. The bool says it was cached.
func cachedRootImage(ctx context.Context, a *initramfs.Archive, tmp, cacheDir string) (*rootImage, bool, error) {
	digest, err := a.Digest()
	if err != nil {
		return nil, false, err
	}
	version, err := exec.CommandContext(ctx, "mksquashfs", "-version").Output()
	if err != nil {
		return nil, false, fmt.Errorf("mksquashfs: %v (install squashfs-tools: make deps)", err)
	}
	first, _, _ := strings.Cut(string(version), "\n")
	// rootImageCacheFormat changes when what the cache keeps beside an
	// image does (its JSON), so that older entries are not read.
	h := sha256.Sum256([]byte(rootImageCacheFormat + "\n" + digest + "\n" + first + "\n" + strings.Join(squashfsArgs, " ")))
	key := hex.EncodeToString(h[:])[:32]
	img, meta := filepath.Join(cacheDir, key+".squashfs"), filepath.Join(cacheDir, key+".json")
	if b, err := os.ReadFile(meta); err == nil {
		var r rootImage
		// Checked again (a tenth of a second): a damaged cache entry
		// would otherwise reach every node as a FATAL line at boot.
		if json.Unmarshal(b, &r) == nil {
			if sum, n, err := crc32File(img); err == nil && sum == r.CRC32 && n == r.Size {
				r.path = img
				now := time.Now()
				_ = os.Chtimes(meta, now, now)
				return &r, true, nil
			}
		}
	}
	r, err := writeRootImage(ctx, a, tmp)
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, false, err
	}
	b, _ := json.Marshal(r)
	// The image first, its description last: a description names a
	// whole image.
	if err := os.Chmod(r.path, 0o644); err != nil {
		return nil, false, err
	}
	if err := os.Rename(r.path, img); err != nil {
		// Another file system (--out elsewhere than the cache): copy.
		if _, err := fsutil.CopyFile(img+".tmp", r.path, 0o644); err != nil {
			return nil, false, err
		}
		if err := os.Rename(img+".tmp", img); err != nil {
			return nil, false, err
		}
	}
	if err := os.WriteFile(meta+".tmp", b, 0o644); err != nil {
		return nil, false, err
	}
	if err := os.Rename(meta+".tmp", meta); err != nil {
		return nil, false, err
	}
	r.path = img
	pruneRootImages(cacheDir, rootImageCache)
	return r, false, nil
}

// pruneRootImages removes all but the keep most recently used images.
func pruneRootImages(dir string, keep int) {
	metas, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(metas) <= keep {
		return
	}
	sort.Slice(metas, func(i, j int) bool {
		fi, _ := os.Stat(metas[i])
		fj, _ := os.Stat(metas[j])
		return fi != nil && fj != nil && fi.ModTime().After(fj.ModTime())
	})
	for _, m := range metas[keep:] {
		os.Remove(m)
		os.Remove(strings.TrimSuffix(m, ".json") + ".squashfs")
	}
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
	sum, size, err := crc32File(out)
	if err != nil {
		return nil, err
	}
	return &rootImage{path: out, CRC32: sum, Files: files, Raw: raw, Size: size}, nil
}

func crc32File(p string) (uint32, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	h := crc32.NewIEEE()
	n, err := io.Copy(h, f)
	return h.Sum32(), n, err
}

// stage1Archive is the initramfs: stage 1, its modules, the root image
// and its checksum, and the node's own files of /etc (image.EtcDir).
func stage1Archive(k *kernel.Kernel, initBinary string, root *rootImage, nodeEtc *initramfs.Archive) (*initramfs.Archive, []string, error) {
	a := initramfs.New()
	for _, d := range []string{"dev", "proc", "sys", strings.TrimPrefix(image.SysRoot, "/")} {
		a.Dir(d, 0o755)
	}
	a.AddDevConsole()
	a.FileFrom("init", initBinary, 0o755)
	a.FileFrom(image.RootImageFile, root.path, 0o600)
	a.File(image.RootImageSumFile, []byte(fmt.Sprintf("%08x %d\n", root.CRC32, root.Size)), 0o644)
	// The node's own files of /etc, under EtcDir ("etc/kiln/config.yaml"
	// of the tree is EtcDir's "kiln/config.yaml").
	a.Merge(nodeEtc, path.Dir(strings.TrimPrefix(image.EtcDir, "/")))

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
