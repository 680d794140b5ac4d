package boot

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	s, ppid, ok := parseStat([]byte("123 (a (weird) name) Z 1 123 123 0 -1 4194564 0 0"))
	if !ok || s != 'Z' || ppid != 1 {
		t.Errorf("%c %d %v", s, ppid, ok)
	}
	if _, _, ok := parseStat([]byte("garbage")); ok {
		t.Error("garbage parsed")
	}
}

// The test process plays PID 1: as a child subreaper it inherits its
// children's orphans. While the reaper scans as fast as it can, os/exec
// must still get every exit code, and every orphan must be reaped.
func TestReaperLeavesExecChildren(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

	r := newReaper()
	var orphans atomic.Int32
	r.reaped = func(pid int, ws unix.WaitStatus) { orphans.Add(1) }
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, unix.SIGCHLD)
	defer signal.Stop(sigchld)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); r.run(sigchld, stop, time.Millisecond) }()
	// A second reaper that never sleeps, to make a race likely.
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				r.reap()
			}
		}
	}()

	const n = 30
	for i := 0; i < n; i++ {
		// The shell leaves a sleeper behind (an orphan re-parented to
		// us) and exits with 7.
		err := exec.Command("sh", "-c", "sleep 0.05 & exit 7").Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("run %d: Wait returned %v, want exit status 7", i, err)
		}
	}
	// A child started with Start and waited for much later.
	c := exec.Command("sh", "-c", "exit 5")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // long a zombie, under the reaper's eyes
	if err := c.Wait(); err == nil || c.ProcessState.ExitCode() != 5 {
		t.Fatalf("late Wait: %v", err)
	}

	deadline := time.Now().Add(5 * time.Second)
	for orphans.Load() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	<-done
	if got := orphans.Load(); got != n {
		t.Errorf("reaped %d orphans, want %d", got, n)
	}
	if z := r.zombieChildren(); len(z) != 0 {
		t.Errorf("zombies left: %v", z)
	}
}
