package supervisor

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// orphanPid waits for the journal to name the first orphan a helper left.
func orphanPid(t *testing.T, dir string) int {
	t.Helper()
	pid := 0
	eventually(t, 10*time.Second, func() error {
		for _, l := range readJournal(t, dir) {
			if p, ok := strings.CutPrefix(l, "orphan "); ok {
				pid, _ = strconv.Atoi(p)
				return nil
			}
		}
		return fmt.Errorf("no orphan in the journal")
	})
	return pid
}

// Whatever a child leaves in its process group dies with it, so a restart
// never finds its predecessor's children (holding its ports, say).
func TestLeftoverGroupMembersAreKilled(t *testing.T) {
	dir := t.TempDir()
	startSupervisor(t, testOptions(), helperSpec(dir, "parent", "orphan"))
	pid := orphanPid(t, dir)
	eventually(t, 10*time.Second, func() error {
		if !processGone(pid) {
			return fmt.Errorf("orphan %d still runs after its parent exited", pid)
		}
		return nil
	})
}

// With KeepChildren (containerd and its shims) the children outlive the
// main process's exit and restarts.
func TestKeepChildrenLeavesChildrenAlive(t *testing.T) {
	dir := t.TempDir()
	sp := helperSpec(dir, "parent", "orphan")
	sp.KeepChildren = true
	r := startSupervisor(t, testOptions(), sp)
	pid := orphanPid(t, dir)
	t.Cleanup(func() {
		// Every run left one; they ignore SIGTERM.
		for _, l := range readJournal(t, dir) {
			if p, ok := strings.CutPrefix(l, "orphan "); ok {
				if n, err := strconv.Atoi(p); err == nil {
					syscall.Kill(n, syscall.SIGKILL)
				}
			}
		}
	})
	eventually(t, 10*time.Second, func() error {
		if st := r.service("parent"); st.Restarts < 2 {
			return fmt.Errorf("parent restarted %d times, want 2", st.Restarts)
		}
		return nil
	})
	if processGone(pid) {
		t.Fatalf("child %d was killed with its parent", pid)
	}
}

// cgroupV2Dir returns a fresh directory in this process's cgroup v2, and
// its path as /proc/PID/cgroup shows it, or skips the test where there is no
// cgroup v2 it may write to.
func cgroupV2Dir(t *testing.T) (dir, rel string) {
	t.Helper()
	mount := ""
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				mount = fields[4]
			}
		}
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil || mount == "" {
		t.Skip("no cgroup v2 mounted")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			rel = p
		}
	}
	rel = filepath.Join(rel, fmt.Sprintf("kiln-supervisor-test-%d", os.Getpid()))
	dir = filepath.Join(mount, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup: %v", err)
	}
	t.Cleanup(func() {
		// Cleanups run last-registered first, so the supervisor has
		// stopped by now; a cgroup can be removed once it is empty.
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() {
				sub := filepath.Join(dir, e.Name())
				eventually(t, 5*time.Second, func() error { return os.Remove(sub) })
			}
		}
		if err := os.Remove(dir); err != nil {
			t.Error(err)
		}
	})
	return dir, rel
}

// With CgroupRoot each service runs in CgroupRoot/<name>, and even a
// grandchild that left the process group dies with its service.
func TestCgroups(t *testing.T) {
	root, rel := cgroupV2Dir(t)
	dir := t.TempDir()
	opts := testOptions()
	opts.CgroupRoot = root
	opts.BackoffBase = time.Minute // one run of the escaper is enough
	r := startSupervisor(t, opts, helperSpec(dir, "svc", "serve"), helperSpec(dir, "escaper", "orphan", "setsid"))
	waitReady(t, r, "svc")

	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", r.service("svc").PID))
	if err != nil {
		t.Fatal(err)
	}
	if want := "0::" + filepath.Join(rel, "svc") + "\n"; !strings.Contains(string(b), want) {
		t.Errorf("svc's cgroups:\n%s\nwant %q", b, want)
	}
	// The status reports the cgroup's memory where the memory controller
	// is on for it.
	if _, err := os.Stat(filepath.Join(root, "svc", "memory.current")); err == nil {
		if m := r.service("svc").MemoryBytes; m == 0 {
			t.Errorf("svc's status has no memory")
		}
	}

	pid := orphanPid(t, dir)
	eventually(t, 10*time.Second, func() error {
		if !processGone(pid) {
			return fmt.Errorf("orphan %d in a session of its own survived", pid)
		}
		b, err := os.ReadFile(filepath.Join(root, "escaper", "cgroup.events"))
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "populated 0") {
			return fmt.Errorf("escaper's cgroup still populated")
		}
		if s := r.service("escaper"); s.LastExit != "exit status 1" {
			return fmt.Errorf("escaper: %+v", s)
		}
		return nil
	})
}
