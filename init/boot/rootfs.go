package boot

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"kiln/configs/image"
	"kiln/init/boot/cmdline"
	"kiln/init/boot/console"
	"kiln/internal/fsutil"
)

// newRoot is where switchRoot builds the tmpfs root before moving it to /.
const newRoot = "/.kiln-root"

// earlyProc is what PID 1 reads from /proc before its early mounts.
type earlyProc struct {
	rootFSType string          // the file system at / ("rootfs": the initramfs); "" when unknown
	cmdline    cmdline.Cmdline // the kernel command line
}

// readEarlyProc mounts /proc for the moment of reading the kernel command
// line (PID 1's one read of it: the boot carries the result to every step
// and to the role) and the root's file system type. /proc is unmounted
// again because switchRoot moves every file under / and must not descend
// into the kernel's files there.
func readEarlyProc() (earlyProc, error) {
	var e earlyProc
	if err := os.MkdirAll("/proc", 0o555); err != nil {
		return e, err
	}
	if err := unix.Mount("proc", "/proc", "proc", all, ""); err != nil {
		return e, fmt.Errorf("mount /proc: %w", err)
	}
	defer unix.Unmount("/proc", 0)
	fstype, ferr := rootFSType("/proc/self/mountinfo")
	cl, cerr := cmdline.Read("/proc/cmdline")
	e.rootFSType, e.cmdline = fstype, cl
	return e, errors.Join(ferr, cerr)
}

// switchRoot moves the initramfs into a tmpfs and re-executes /init there.
//
// The kernel unpacks the initramfs into "rootfs", the root of the mount
// tree, and pivot_root(2) refuses to move that mount: runc (containerd's
// runtime) pivot_roots into every container, so containers would not start.
// A tmpfs mounted over / does not have the problem. Files are moved one at
// a time (copied, then removed), so memory use grows by one file at most;
// the re-exec lets the kernel free the old /init.
//
// It returns nil without doing anything when / is not rootfs (this is the
// re-executed PID 1, or the image was booted from a real root). On success
// it does not return.
func switchRoot(con *console.Console, early earlyProc) error {
	switch early.rootFSType {
	case "":
		return errors.New("the root's file system type is unknown")
	case "rootfs":
	default:
		return nil
	}
	if v, _ := early.cmdline.Get(image.ParamSwitchRoot); v == "off" || v == "0" || v == "false" {
		con.Stage("root stays on the initramfs (%s=%s): containers cannot pivot_root", image.ParamSwitchRoot, v)
		return nil
	}

	if err := os.Mkdir(newRoot, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := unix.Mount("root", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", newRoot, err)
	}
	n, size, err := moveTree("/", newRoot, map[string]bool{newRoot: true})
	if err != nil {
		// Some files are moved, some not, and there is no going back:
		// the new root is still the better one (a tmpfs). Say so loudly.
		con.Warn("moving the root to tmpfs failed after %d files: %v", n, err)
	}
	if err := os.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	con.Stage("root moved to tmpfs (%d files, %.1f MB); restarting /init", n, float64(size)/1e6)
	argv := os.Args
	if len(argv) == 0 {
		argv = []string{"/init"}
	}
	err = syscall.Exec("/init", argv, os.Environ())
	return fmt.Errorf("exec /init in the new root: %w", err)
}

// rootFSType returns the file system type of the mount at / in a
// mountinfo file.
func rootFSType(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fstype := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m, ok := parseMountinfo(sc.Text())
		if ok && m.Target == "/" {
			fstype = m.FSType // the last mount on / is the visible one
		}
	}
	if fstype == "" {
		return "", fmt.Errorf("%s: no mount on /", mountinfo)
	}
	return fstype, sc.Err()
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	Target string
	FSType string
	Source string
}

// parseMountinfo parses "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3
// /dev/root rw,errors=continue".
func parseMountinfo(line string) (mountEntry, bool) {
	fields := strings.Fields(line)
	sep := -1
	for i, f := range fields {
		if f == "-" {
			sep = i
			break
		}
	}
	if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
		return mountEntry{}, false
	}
	return mountEntry{Target: unescapeMountinfo(fields[4]), FSType: fields[sep+1], Source: unescapeMountinfo(fields[sep+2])}, true
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// moveTree moves the tree under src into dst (same ownership, modes and
// times), file by file, removing each source after its copy. Paths in skip
// are left alone.
func moveTree(src, dst string, skip map[string]bool) (files int, bytes int64, err error) {
	ents, err := os.ReadDir(src)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range ents {
		s, d := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if skip[s] {
			continue
		}
		n, b, err := moveOne(s, d, skip)
		files += n
		bytes += b
		if err != nil {
			return files, bytes, err
		}
	}
	return files, bytes, nil
}

func moveOne(s, d string, skip map[string]bool) (int, int64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(s, &st); err != nil {
		return 0, 0, err
	}
	mode := st.Mode & 0o7777
	var size int64
	files := 1
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return 0, 0, err
		}
		n, b, err := moveTree(s, d, skip)
		if err != nil {
			return n, b, err
		}
		files, size = n+1, b
	case unix.S_IFLNK:
		target, err := os.Readlink(s)
		if err != nil {
			return 0, 0, err
		}
		if err := os.Symlink(target, d); err != nil {
			return 0, 0, err
		}
	case unix.S_IFREG:
		// 0600 until the chmod below gives the source's mode: it comes
		// after the chown, which would clear set-id bits.
		n, err := fsutil.CopyFile(d, s, 0o600)
		if err != nil {
			return 0, 0, err
		}
		size = n
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		if err := unix.Mknod(d, st.Mode, int(st.Rdev)); err != nil {
			return 0, 0, fmt.Errorf("mknod %s: %w", d, err)
		}
	default: // sockets: nothing to keep
		return 0, 0, nil
	}
	if err := unix.Lchown(d, int(st.Uid), int(st.Gid)); err != nil {
		return 0, 0, fmt.Errorf("chown %s: %w", d, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Chmod(d, mode); err != nil {
			return 0, 0, fmt.Errorf("chmod %s: %w", d, err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	_ = unix.UtimesNanoAt(unix.AT_FDCWD, d, ts, unix.AT_SYMLINK_NOFOLLOW)
	// The source goes now, so the copy does not double the memory used. A
	// directory that is a mount point (/proc) stays.
	_ = os.Remove(s)
	return files, size, nil
}
