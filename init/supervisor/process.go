package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// drainTimeout bounds how long output is still read after a process has
// exited: its last lines (often the reason it died) belong in the logs
// before the exit is reported, but a pipe held open by something that
// escaped the kill must not hold up the restart.
const drainTimeout = 2 * time.Second

// process is one running child.
type process struct {
	pid       int
	proc      *os.Process
	exited    chan error // receives cmd.Wait's result, once
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
	err = s.spawner.start(cmd)
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
		exited:       make(chan error, 1),
		pipes:        []*os.File{outR, errR},
		cgroupDir:    sv.cgroupDir,
		keepChildren: sv.spec.KeepChildren,
	}
	for _, r := range p.pipes {
		p.readers.Go(func() {
			defer r.Close()
			splitLines(r, sv.logs.write)
		})
	}
	go func() { p.exited <- cmd.Wait() }()
	return p, nil
}

// terminate asks the process group to stop with SIGTERM and escalates to
// SIGKILL after timeout. It returns Wait's result and whether it had to kill.
func (p *process) terminate(timeout time.Duration) (error, bool) {
	p.signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-p.exited:
		return err, false
	case <-t.C:
	}
	p.signal(syscall.SIGKILL)
	return <-p.exited, true
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
		p.readers.Wait()
		close(drained)
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
	cmd *exec.Cmd
	res chan error
}

func newSpawner() *spawner {
	sp := &spawner{reqs: make(chan spawnReq)}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for r := range sp.reqs {
			r.res <- r.cmd.Start()
		}
	}()
	return sp
}

func (sp *spawner) start(cmd *exec.Cmd) error {
	res := make(chan error, 1)
	sp.reqs <- spawnReq{cmd: cmd, res: res}
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
		}
	}
	return nil
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
