// Package stage1 is the initramfs' /init (cmd/kiln-init): the few steps
// that must run before the node's root file system exists. It checks that
// the kernel unpacked the whole initramfs, loads the modules that mount the
// root image (loop, squashfs, overlay), checks the image against the hash
// the builder recorded, mounts it read-only with tmpfs and overlay only
// where the node writes, frees the initramfs and executes kiln-node, the
// real PID 1, from the new root.
//
// Why two stages: kiln-node links Kubernetes, etcd and containerd
// (≈170 MB). In the initramfs it would be unpacked into RAM the kernel can
// never page out; in a compressed read-only image it is read through the
// page cache, a page at a time, and shared by every component (they are
// all kiln-node). And a real root mount is what runc needs to pivot_root
// into containers, which the initramfs' rootfs refuses.
//
// Stage 1 never exits: an error is printed as "kiln: FATAL: ..." with the
// fix (more memory, or a rebuilt image) every 30 seconds, because the
// kernel panics when init exits.
package stage1

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kiln/configs/image"
	"kiln/init/boot/console"
	"kiln/init/boot/kmod"
)

// fatalRepeat is how often a fatal error is printed again.
const fatalRepeat = 30 * time.Second

// Main is the whole life of stage 1: on success it does not return (the
// process becomes kiln-node); on failure it reports forever.
func Main() {
	console.EnsureStdFds()
	con := console.New(os.Stderr, console.KernelStart())
	err := run(con)
	for {
		con.Fatal(err)
		con.Stage("the node stays up to report this; power it off to stop it")
		time.Sleep(fatalRepeat)
	}
}

// run does the steps; it returns only on failure.
func run(con *console.Console) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("stage 1 panicked: %v", v)
		}
	}()
	start := time.Now()
	for _, m := range []struct{ src, dst, fstype string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	if err := CheckComplete("/"); err != nil {
		return err
	}
	rel := kmod.Release()
	r, err := kmod.Load(image.EarlyModulesFile, filepath.Join("/lib/modules", rel))
	if err != nil {
		return fmt.Errorf("modules: %w", err)
	}
	for _, w := range r.Warnings {
		con.Warn("%s", w)
	}
	con.Stage("stage 1: modules %s", r)

	t := time.Now()
	size, err := Verify(image.RootImageFile, image.RootImageSumFile)
	if err != nil {
		return err
	}
	con.Stage("stage 1: root image %s checked (%.1f MB, CRC-32, %.2fs)", image.RootImageFile, float64(size)/1e6, time.Since(t).Seconds())

	loop, err := attachLoop(image.RootImageFile)
	if err != nil {
		return fmt.Errorf("root image %s: %w", image.RootImageFile, err)
	}
	dev := loop.Name()
	err = mountRoot(dev, image.SysRoot)
	// Closed only now: AUTOCLEAR detaches the device at its last close,
	// and from here the mount holds it.
	loop.Close()
	if err != nil {
		return err
	}
	con.Stage("stage 1: root mounted read-only from %s (%s) on %s in %.2fs", image.RootImageFile, dev, image.SysRoot, time.Since(start).Seconds())

	for _, d := range []string{"/proc", "/sys"} {
		_ = unix.Unmount(d, unix.MNT_DETACH)
	}
	// The device node of the loop is not needed once mounted: kiln-node
	// mounts its own devtmpfs in the new root.
	_ = unix.Unmount("/dev", unix.MNT_DETACH)
	freed := freeInitramfs("/", image.SysRoot)
	return switchRoot(con, image.SysRoot, freed)
}

// CheckComplete fails when the archive's last entry is missing under
// root: the kernel ran out of memory unpacking the initramfs and booted on
// with part of it. Stage 1 cannot know the archive's size, so it gives the
// rule (image.MemoryAdvice) rather than a figure.
func CheckComplete(root string) error {
	if _, err := os.Stat(filepath.Join(root, image.CompleteMarker)); err == nil {
		return nil
	}
	mem := ""
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		mem = fmt.Sprintf(" (it has %d MiB)", uint64(si.Totalram)*uint64(si.Unit)>>20)
	}
	return fmt.Errorf("the initramfs was not unpacked whole (%s is missing; the kernel log says \"Initramfs unpacking failed\"): "+
		"this machine has too little memory%s: %s; or the initramfs file itself is cut short: compare its size with image.json's and copy it again",
		image.CompleteMarker, mem, image.MemoryAdvice())
}

// Verify checks the root image against the CRC-32 and size the builder
// wrote beside it (image.RootImageSumFile), and returns its size. A
// mismatch (a corrupt download, a truncated copy, a bad disk) is an error
// that says to rebuild: mounting such an image would fail later, at
// random, as read errors.
func Verify(imagePath, sumPath string) (int64, error) {
	want, err := os.ReadFile(sumPath)
	if err != nil {
		return 0, fmt.Errorf("the root image's checksum: %w (the initramfs is not one kiln build made: rebuild the image)", err)
	}
	var wantSum uint32
	var wantSize int64
	if _, err := fmt.Sscanf(string(want), "%08x %d", &wantSum, &wantSize); err != nil {
		return 0, fmt.Errorf("the root image's checksum %s: %q: %v (rebuild the image)", sumPath, want, err)
	}
	f, err := os.Open(imagePath)
	if err != nil {
		return 0, fmt.Errorf("the root image: %w (rebuild the image)", err)
	}
	defer f.Close()
	h := crc32.NewIEEE()
	n, err := io.Copy(h, f)
	if err != nil {
		return n, fmt.Errorf("reading the root image %s: %w", imagePath, err)
	}
	if got := h.Sum32(); got != wantSum || n != wantSize {
		return n, fmt.Errorf("the root image %s is corrupt (%d bytes, CRC-32 %08x; the image was built with %d bytes, %08x): rebuild the image (make image), or copy it again",
			imagePath, n, got, wantSize, wantSum)
	}
	return n, nil
}

// attachLoop attaches file read-only to a free loop device and returns
// the device, open. AUTOCLEAR detaches it at its last close, so the caller
// closes it only once the device is mounted (or when giving up), and the
// device is freed when the root is unmounted.
func attachLoop(file string) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("the loop driver: %w (is the loop module in the initramfs?)", err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return nil, fmt.Errorf("no free loop device: %w", err)
	}
	dev := fmt.Sprintf("/dev/loop%d", n)
	lf, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	img, err := os.Open(file)
	if err != nil {
		lf.Close()
		return nil, err
	}
	defer img.Close()
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_FD, int(img.Fd())); err != nil {
		lf.Close()
		return nil, fmt.Errorf("attach to %s: %w", dev, err)
	}
	info := unix.LoopInfo64{Flags: unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR}
	copy(info.File_name[:], file)
	if err := unix.IoctlLoopSetStatus64(int(lf.Fd()), &info); err != nil {
		_ = unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
		lf.Close()
		return nil, fmt.Errorf("set up %s: %w", dev, err)
	}
	return lf, nil
}

// mountRoot mounts the squashfs read-only on root and makes the places
// the node writes writable: /run (whose tmpfs also holds the upper layer
// of /etc), /var and /root on tmpfs, /etc as an overlay of the image's
// /etc. kiln-node mounts the rest (/proc, /sys, /dev, /tmp, cgroups) as on
// any root, and the state disk on /var/lib.
func mountRoot(dev, root string) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, root, "squashfs", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount the root image (%s) as squashfs: %w: the image is damaged or this kernel lacks squashfs: rebuild the image (make image)", dev, err)
	}
	for _, m := range []struct {
		dir  string
		opts string
	}{
		{"run", "mode=0755"},
		{"var", "mode=0755"},
		{"root", "mode=0700"},
	} {
		if err := unix.Mount(m.dir, filepath.Join(root, m.dir), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, m.opts); err != nil {
			return fmt.Errorf("mount tmpfs on /%s: %w", m.dir, err)
		}
	}
	for _, d := range []string{"var/lib", "var/log", "run/kiln/etc/upper", "run/kiln/etc/work"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	// The node's own files of /etc (its config, the cluster material)
	// come in the initramfs beside the root image: the upper layer
	// starts with them.
	if err := copyTree(image.EtcDir, filepath.Join(root, "run/kiln/etc/upper")); err != nil {
		return fmt.Errorf("the node's files of /etc (%s): %w", image.EtcDir, err)
	}
	etc := filepath.Join(root, "etc")
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", etc, filepath.Join(root, "run/kiln/etc/upper"), filepath.Join(root, "run/kiln/etc/work"))
	if err := unix.Mount("etc", etc, "overlay", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount the overlay on /etc: %w (is the overlay module in the initramfs?)", err)
	}
	return nil
}

// copyTree copies the directories, regular files and symlinks under src
// into dst with their modes (the owner is root's: stage 1's). A missing
// src copies nothing.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) && p == src {
			return filepath.SkipDir
		}
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.MkdirAll(to, 0o700); err != nil {
				return err
			}
			return os.Chmod(to, fi.Mode().Perm())
		case d.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.WriteFile(to, b, 0o600); err != nil {
				return err
			}
			return os.Chmod(to, fi.Mode().Perm())
		}
		return nil
	})
}

// freeInitramfs removes the initramfs' files (the kernel never frees
// them otherwise), staying on its file system: mounts under it (the new
// root) are left alone. The root image's file is removed too: the loop
// device holds it open, so its pages stay as long as the root is mounted.
// It returns the bytes removed.
func freeInitramfs(dir, keep string) int64 {
	var st unix.Stat_t
	if unix.Lstat(dir, &st) != nil {
		return 0
	}
	return removeTree(dir, st.Dev, keep)
}

func removeTree(dir string, dev uint64, keep string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var freed int64
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if p == keep {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != dev {
			continue // a mount point
		}
		if e.IsDir() {
			freed += removeTree(p, dev, keep)
		} else if st.Mode&unix.S_IFMT == unix.S_IFREG {
			freed += st.Size
		}
		_ = os.Remove(p)
	}
	return freed
}

// switchRoot makes root the root of the mount tree and executes
// image.NodeInit (kiln-node) there as PID 1.
func switchRoot(con *console.Console, root string, freed int64) error {
	if err := os.Chdir(root); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	con.Stage("stage 1: initramfs freed (%.1f MB); starting %s", float64(freed)/1e6, image.NodeInit)
	argv := os.Args
	if len(argv) == 0 {
		argv = []string{image.NodeInit}
	}
	argv = append([]string{image.NodeInit}, argv[1:]...)
	// kiln-node puts stage 1's lines in the node's status (kiln status
	// --node: the boot timeline), so they cross the exec with it.
	env := append(os.Environ(), console.StagesEnv+"="+console.EncodeStages(con.Stages()))
	err := syscall.Exec(image.NodeInit, argv, env)
	return fmt.Errorf("exec %s in the root image: %w: rebuild the image", image.NodeInit, err)
}
