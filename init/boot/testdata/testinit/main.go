// Command testinit is PID 1 in the boot package's VM tests: it calls
// boot.PID1 with an up function that reports what the boot gave it (role,
// data dir, hostname, cgroups), checks that os/exec still gets its
// children's exit codes while PID 1 reaps orphans, keeps a marker file in
// the data dir, and waits to be stopped.
//
// Started as anything but PID 1 it is its own helper child:
//
//	testinit exit N     exits with status N
//	testinit orphan     starts "testinit sleep" and exits at once, leaving
//	                    an orphan for PID 1 to reap
//	testinit sleep      sleeps 300 ms
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"kiln/init/boot"
)

func main() {
	if os.Getpid() != 1 {
		child(os.Args[1:])
		return
	}
	boot.PID1(up)
}

func child(args []string) {
	if len(args) == 0 {
		os.Exit(2)
	}
	switch args[0] {
	case "exit":
		n, _ := strconv.Atoi(args[1])
		os.Exit(n)
	case "orphan":
		c := exec.Command("/init", "sleep")
		if err := c.Start(); err != nil {
			os.Exit(1)
		}
		os.Exit(0) // without waiting: the sleeper is re-parented to PID 1
	case "sleep":
		time.Sleep(300 * time.Millisecond)
	}
}

func up(ctx context.Context, n boot.Node) error {
	say := func(format string, args ...any) {
		fmt.Fprintf(n.Console, "kiln-test: "+format+"\n", args...)
	}
	host, _ := os.Hostname()
	say("up called role=%s data=%s host=%s address=%s", n.Config.Role, n.DataDir, host, n.Config.Address)
	say("cgroup.controllers: %s", read("/sys/fs/cgroup/cgroup.controllers"))
	say("kiln subtree_control: %s", read(filepath.Join(n.CgroupRoot, "cgroup.subtree_control")))
	say("pid 1 cgroup: %s", read("/proc/self/cgroup"))
	checkCgroups(n, say)

	marker := filepath.Join(n.DataDir, "marker")
	if b, err := os.ReadFile(marker); err == nil {
		say("marker found: %s", strings.TrimSpace(string(b)))
	} else if err := writeSynced(marker, "written at boot "+host); err != nil {
		say("marker: %v", err)
	} else {
		say("marker written")
	}

	checkExec(say)

	<-ctx.Done()
	say("up stopping")
	return nil
}

// checkCgroups runs a child in CgroupRoot/test the way the supervisor does
// and makes a kubepods tree beside kiln's.
func checkCgroups(n boot.Node, say func(string, ...any)) {
	dir := filepath.Join(n.CgroupRoot, "test")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		say("cgroup child: %v", err)
		return
	}
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		say("cgroup child: %v", err)
		return
	}
	defer syscall.Close(fd)
	c := exec.Command("/init", "exit", "0")
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := c.Run(); err != nil {
		say("cgroup child: %v", err)
	} else {
		say("cgroup child ok, its controllers: %s", read(filepath.Join(dir, "cgroup.controllers")))
	}
	os.Remove(dir)
	if err := os.MkdirAll("/sys/fs/cgroup/kubepods", 0o755); err != nil {
		say("kubepods: %v", err)
		return
	}
	say("kubepods controllers: %s", read("/sys/fs/cgroup/kubepods/cgroup.controllers"))
}

// checkExec makes sure os/exec's Wait gets exit codes while PID 1 reaps
// orphans at the same time.
func checkExec(say func(string, ...any)) {
	ok := 0
	for i := 0; i < 5; i++ {
		orphan := exec.Command("/init", "orphan")
		if err := orphan.Run(); err != nil {
			say("orphan maker: %v", err)
		}
		err := exec.Command("/init", "exit", "3").Run()
		if ee, isExit := err.(*exec.ExitError); isExit && ee.ExitCode() == 3 {
			ok++
		} else {
			say("exec exit code: got %v, want exit status 3", err)
		}
	}
	say("exec exit codes %d/5 ok", ok)
	// The sleepers end 300 ms after they started; give the reaper time.
	deadline := time.Now().Add(10 * time.Second)
	z := zombies()
	for len(z) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		z = zombies()
	}
	say("zombies left: %d %v", len(z), z)
}

func zombies() []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 && strings.HasPrefix(s[i+1:], " Z") {
			out = append(out, e.Name())
		}
	}
	return out
}

func read(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return err.Error()
	}
	return strings.Join(strings.Fields(string(b)), " ")
}

// writeSynced writes a file and syncs it and its directory: the test kills
// the VM right after.
func writeSynced(p, content string) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, content+"\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(p))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
