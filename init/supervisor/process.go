package supervisor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"kiln/internal/panics"
)

// drainTimeout bounds how long output is still read after a process has
// exited: its last lines (often the reason it died) belong in the logs
// before the exit is reported, but a pipe held open by something that
// escaped the kill must not hold up the restart.
const drainTimeout = 2 * time.Second

// process is one running child.
type process struct {
	pid  int
	proc *os.Process
	// exited is closed once cmd.Wait has returned; waitErr is its result.
	// Any number of waits may watch it (a run that panicked is cleaned up
	// by another).
	exited    chan struct{}
	waitErr   error
	pipes     []*os.File // read ends of stdout and stderr
	readers   sync.WaitGroup
	cgroupDir string
	// keepChildren: signals and the final kill reach the main process only.
	keepChildren bool
}

// start starts the service's process in its own process group (so a stop
// reaches everything it spawned) with SIGKILL as its parent-death signal (so
// it cannot outlive the supervisor), in its cgroup if there is one. Output
// goes through pipes of our own rather than exec's copying goroutines, so
// that Wait never hangs on a pipe a grandchild inherited.
func (s *Supervisor) start(sv *service) (*process, error) {
	cmd := exec.Command(sv.spec.Path, sv.spec.Args...)
	cmd.Env = append(os.Environ(), sv.spec.Env...)
	cmd.Dir = sv.spec.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if sv.cgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = sv.cgroupFD
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = s.spawner.start(cmd, s.reportPanic)
	outW.Close() // the child has its copies; EOF comes when the last holder exits
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, err
	}
	p := &process{
		pid:          cmd.Process.Pid,
		proc:         cmd.Process,
		exited:       make(chan struct{}),
		pipes:        []*os.File{outR, errR},
		cgroupDir:    sv.cgroupDir,
		keepChildren: sv.spec.KeepChildren,
	}
	for _, r := range p.pipes {
		p.readers.Go(func() {
			defer r.Close()
			s.readOutput(sv, r)
		})
	}
	go func() {
		defer close(p.exited)
		// A Wait that panicked counts as an exit: cleanup then kills
		// whatever is left of the process group.
		p.waitErr = panics.Guard(s.reportPanic, "the wait for "+sv.spec.Name, cmd.Wait)
	}()
	return p, nil
}

// readOutput reads one of a process's pipes to the end into the service's
// sink. A panic while handling a line costs that line (it is reported);
// a panic in the reading itself starts the reading again. Either way the
// pipe is drained: a child whose output nobody reads blocks on its next
// write.
func (s *Supervisor) readOutput(sv *service, r io.Reader) {
	what := "the output reader of " + sv.spec.Name
	emit := func(line []byte) {
		_ = panics.Do(s.reportPanic, what, func() {
			callHook(hookLine, sv.spec.Name)
			sv.logs.write(line)
		})
	}
	for {
		if panics.Do(s.reportPanic, what, func() { splitLines(r, emit) }) == nil {
			return
		}
		time.Sleep(10 * time.Millisecond) // no busy loop on a reader that panics at once
	}
}

// terminate asks the process group to stop with SIGTERM and escalates to
// SIGKILL after timeout. It returns Wait's result and whether it had to kill.
func (p *process) terminate(timeout time.Duration) (error, bool) {
	p.signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.exited:
		return p.waitErr, false
	case <-t.C:
	}
	p.signal(syscall.SIGKILL)
	<-p.exited
	return p.waitErr, true
}

// hasExited reports whether cmd.Wait has returned.
func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// cleanup runs after the process has exited and been reaped. Anything it
// left behind in its process group or cgroup is killed: a restarted
// component must not find its predecessor's children holding its ports, and
// nothing may outlive a stop. Then the remaining output is drained.
func (p *process) cleanup() {
	if p.keepChildren {
		p.drain()
		return
	}
	// Signalling a group whose leader is reaped is safe: while members
	// remain, the kernel does not hand the id out again.
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	if p.cgroupDir != "" {
		// cgroup.kill needs Linux 5.14; without it the group kill above
		// is all there is.
		_ = os.WriteFile(filepath.Join(p.cgroupDir, "cgroup.kill"), []byte("1"), 0)
	}
	p.drain()
}

// drain waits for the output pipes to close, giving up after drainTimeout
// when a surviving child holds them.
func (p *process) drain() {
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		p.readers.Wait() // cannot panic; the close is deferred all the same
	}()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
		for _, r := range p.pipes {
			_ = r.SetReadDeadline(time.Now())
		}
		<-drained
	}
}

// signal signals the process group, and the process itself in case it moved
// to a group of its own (os.Process knows whether it has been reaped, so
// this never hits a recycled pid). Errors only mean nothing is left.
func (p *process) signal(sig syscall.Signal) {
	if !p.keepChildren {
		_ = syscall.Kill(-p.pid, sig)
	}
	_ = p.proc.Signal(sig)
}

// spawner starts every child from one goroutine locked to its OS thread.
// The parent-death signal fires when the thread that forked the child
// exits, not the process: a child forked from an ordinary goroutine's thread
// would be killed if that thread were ever retired (the runtime retires
// threads that a goroutine left locked, as netlink/netns code does). This
// thread lives as long as Run.
type spawner struct {
	reqs chan spawnReq
}

type spawnReq struct {
	cmd    *exec.Cmd
	res    chan error
	report func(string)
}

func newSpawner() *spawner {
	sp := &spawner{reqs: make(chan spawnReq)}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for r := range sp.reqs {
			// A start that panicked is a failed start; the thread
			// stays, and so do the children it forked.
			r.res <- panics.Guard(r.report, "the start of "+r.cmd.Path, r.cmd.Start)
		}
	}()
	return sp
}

// start starts cmd on the spawner's thread; a panic is reported through
// report and returned as the start's error.
func (sp *spawner) start(cmd *exec.Cmd, report func(string)) error {
	res := make(chan error, 1)
	sp.reqs <- spawnReq{cmd: cmd, res: res, report: report}
	return <-res
}

// close ends the spawner thread; call it only when no child is left.
func (sp *spawner) close() { close(sp.reqs) }

// setup prepares what Run needs before any start: the log files and the
// cgroups. On error nothing has been started.
func (s *Supervisor) setup() error {
	if s.opts.LogDir != "" {
		if err := os.MkdirAll(s.opts.LogDir, 0o755); err != nil {
			return fmt.Errorf("supervisor: log dir: %w", err)
		}
		for _, sv := range s.services {
			f, err := openRotating(filepath.Join(s.opts.LogDir, sv.spec.Name+".log"), s.opts.MaxLogBytes, s.opts.MaxLogFiles)
			if err != nil {
				return fmt.Errorf("supervisor: %s: %w", sv.spec.Name, err)
			}
			sv.logs.setFile(f)
		}
	}
	if s.opts.CgroupRoot != "" {
		for _, sv := range s.services {
			dir := filepath.Join(s.opts.CgroupRoot, sv.spec.Name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("supervisor: %s: cgroup: %w", sv.spec.Name, err)
			}
			fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("supervisor: %s: cgroup: %w", sv.spec.Name, &os.PathError{Op: "open", Path: dir, Err: err})
			}
			sv.cgroupDir, sv.cgroupFD = dir, fd
			s.setMemory(sv.spec.Name, dir, sv.spec.MemoryLow, sv.spec.MemoryHigh)
		}
		var low uint64
		for _, sv := range s.services {
			low += sv.spec.MemoryLow
		}
		if low > 0 {
			s.setMemory("", s.opts.CgroupRoot, low, 0)
		}
	}
	return nil
}

// setMemory writes a cgroup's memory.low and, for a service (name not
// ""), memory.high: the values, or the kernel's defaults (0, max) for
// none, so that a cgroup left from an earlier run says what its Spec
// says. Without the memory controller the files are missing and nothing
// is written. A value the kernel refuses costs the setting, not the node:
// it is reported.
func (s *Supervisor) setMemory(name, dir string, low, high uint64) {
	files := []struct {
		file, value string
	}{{"memory.low", memoryValue(low, "0")}}
	if name != "" {
		files = append(files, struct{ file, value string }{"memory.high", memoryValue(high, "max")})
	}
	for _, f := range files {
		err := writeExisting(filepath.Join(dir, f.file), f.value)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			what := "cgroup " + dir
			if name != "" {
				what = name
			}
			s.say(fmt.Sprintf("%s: %s not set: %v", what, f.file, err))
		}
	}
}

func memoryValue(n uint64, none string) string {
	if n == 0 {
		return none
	}
	return strconv.FormatUint(n, 10)
}

// writeExisting writes a file that must exist already (a cgroup's
// controller file; never created).
func writeExisting(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	return errors.Join(err, f.Close())
}

// teardown releases what setup acquired; every child has exited by then.
func (s *Supervisor) teardown() {
	var errs []error
	for _, sv := range s.services {
		if sv.cgroupFD >= 0 {
			errs = append(errs, syscall.Close(sv.cgroupFD))
			sv.cgroupFD = -1
		}
		errs = append(errs, sv.logs.closeFile())
	}
	if err := errors.Join(errs...); err != nil {
		s.say("closing files: " + err.Error())
	}
}
