package boot

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"kiln/init/boot/cmdline"
	"kiln/init/boot/console"
)

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

// checkRoot warns when PID 1 runs on the initramfs itself: kiln's images
// start kiln-node from the root image (stage 1, cmd/kiln-init), and runc
// cannot pivot_root out of the initramfs' rootfs, so pods would not start.
func checkRoot(con *console.Console, early earlyProc) {
	switch early.rootFSType {
	case "":
		con.Warn("the root's file system type is unknown")
	case "rootfs":
		con.Warn("kiln-node runs on the initramfs (/ is rootfs), not on a root image mounted by kiln-init: containers cannot pivot_root; rebuild the image with kiln build")
	default:
		con.Stage("root: %s (read-only image)", early.rootFSType)
	}
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
