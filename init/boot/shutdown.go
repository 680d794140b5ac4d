package boot

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"kiln/init/boot/console"
)

// pfKthread is PF_KTHREAD in /proc/PID/stat's flags.
const pfKthread = 0x00200000

// userProcesses lists the processes other than PID 1 and kernel threads.
func userProcesses(proc string) []int {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 7 {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		if flags&pfKthread != 0 || f[0] == "Z" {
			continue // zombies are the reaper's
		}
		out = append(out, pid)
	}
	return out
}

// killAll sends SIGTERM to every process left, waits up to timeout for
// them to exit, then SIGKILLs the rest. kill(-1) reaches all but PID 1.
func killAll(con *console.Console, timeout time.Duration) {
	if len(userProcesses("/proc")) == 0 {
		return
	}
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if len(userProcesses("/proc")) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	left := userProcesses("/proc")
	if len(left) > 0 {
		con.Stage("%d processes left after SIGTERM: SIGKILL", len(left))
		_ = unix.Kill(-1, unix.SIGKILL)
		time.Sleep(200 * time.Millisecond)
	}
}

// keepMounted are the mounts shutdown leaves: the kernel's own file
// systems, which hold no data and which the last steps still use.
var keepMounted = map[string]bool{"/": true, "/proc": true, "/sys": true, "/dev": true}

// unmountAll unmounts everything but keepMounted, deepest first. A busy
// file system is remounted read-only (so its data is safe) and detached.
func unmountAll(con *console.Console) (n int) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0
	}
	var targets []string
	for _, l := range strings.Split(string(b), "\n") {
		if m, ok := parseMountinfo(l); ok && !keepMounted[m.Target] {
			targets = append(targets, m.Target)
		}
	}
	for i := len(targets) - 1; i >= 0; i-- {
		t := targets[i]
		err := unix.Unmount(t, 0)
		if errors.Is(err, unix.EBUSY) {
			_ = unix.Mount("", t, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
			err = unix.Unmount(t, unix.MNT_DETACH)
		}
		switch {
		case err == nil:
			n++
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			// already gone with its parent
		default:
			con.Warn("unmount %s: %v", t, err)
		}
	}
	return n
}
