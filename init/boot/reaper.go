package boot

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// reaper reaps the zombies PID 1 inherits (orphans re-parented to it)
// without stealing the exit status of the children os/exec waits for.
//
// A plain wait4(-1) loop would reap a component the supervisor started with
// os/exec before cmd.Wait gets to it, and Wait would fail with "no child
// processes": the supervisor would lose every exit code. So the reaper only
// reaps zombies nobody else in this process can wait for. It knows them
// without any registry: since Go 1.23, os.StartProcess (under os/exec)
// creates each child with CLONE_PIDFD and keeps that pidfd open until Wait
// has reaped the child (os.FindProcess opens one too). A zombie child of
// ours that this process holds a pidfd for belongs to a Process value whose
// owner will Wait; any other zombie child is an orphan, and wait4(pid)
// collects it.
//
// Order matters: zombies are listed first, pidfds second. The kernel
// installs the pidfd in our file table inside clone(), before the child can
// run, so a child that is already a zombie when listed has its pidfd in the
// later listing unless Wait has reaped it in between, in which case the
// wait4 below finds nothing (WNOHANG) and does no harm. The only way to
// steal is for that pid to be reused by a new os/exec child which exits
// within the same scan: pids are handed out in increasing order up to
// pid_max, so that cannot happen within microseconds.
//
// Children started with syscall.ForkExec (no os.Process, no pidfd) are not
// protected: kiln starts processes with os/exec only.
type reaper struct {
	proc string // /proc
	pid  int    // whose children to reap: 1 as PID 1, the test binary in tests
	// reaped is called for each reaped orphan (for logs and tests).
	reaped func(pid int, status unix.WaitStatus)
}

func newReaper() *reaper {
	return &reaper{proc: "/proc", pid: os.Getpid()}
}

// run reaps on every SIGCHLD and every interval (a signal may be missed
// while a scan runs) until stop is closed.
func (r *reaper) run(sigchld <-chan os.Signal, stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		r.reap()
		select {
		case <-stop:
			return
		case <-sigchld:
		case <-t.C:
		}
	}
}

// reap does one scan and returns how many orphans it reaped.
func (r *reaper) reap() int {
	zombies := r.zombieChildren()
	if len(zombies) == 0 {
		return 0
	}
	owned := r.pidfdPids()
	n := 0
	for _, pid := range zombies {
		if owned[pid] {
			continue // os/exec's: its Wait will reap it
		}
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err != nil || got != pid {
			continue
		}
		n++
		if r.reaped != nil {
			r.reaped(pid, ws)
		}
	}
	return n
}

// zombieChildren lists the zombies whose parent is r.pid.
func (r *reaper) zombieChildren() []int {
	ents, err := os.ReadDir(r.proc)
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == r.pid {
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.proc, e.Name(), "stat"))
		if err != nil {
			continue
		}
		state, ppid, ok := parseStat(b)
		if ok && state == 'Z' && ppid == r.pid {
			out = append(out, pid)
		}
	}
	return out
}

// parseStat returns the state and the parent pid from /proc/PID/stat:
// "PID (comm) S PPID ...", where comm may itself hold spaces and parens.
func parseStat(b []byte) (state byte, ppid int, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], ppid, true
}

// pidfdPids returns the pids this process holds pidfds for.
func (r *reaper) pidfdPids() map[int]bool {
	dir := filepath.Join(r.proc, "self", "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := map[int]bool{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || target != "anon_inode:[pidfd]" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.proc, "self", "fdinfo", e.Name()))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Pid:"); ok {
				if pid, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && pid > 0 {
					out[pid] = true
				}
			}
		}
	}
	return out
}
