// Package supervisor runs a fixed set of long-lived child processes the way
// an init system would: in dependency order, gated by readiness probes,
// restarted with exponential backoff when they exit, and stopped in reverse
// dependency order. It knows nothing about Kubernetes; the node binary
// describes each component as a Spec.
//
// Every child gets its own process group and a parent-death signal, so none
// outlives the supervisor, and its output is split into lines that go to a
// rotated log file, an in-memory ring (Logs, the /logs handler) and,
// prefixed with the service name, an optional console writer.
package supervisor

import (
	"kiln/configs/nodeapi"

	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"kiln/internal/ctxutil"
	"kiln/internal/panics"
)

// Spec describes one supervised service.
type Spec struct {
	Name      string   // unique, e.g. "kube-apiserver"
	Path      string   // executable to run
	Args      []string // argv without argv[0]
	Env       []string // extra environment (appended to os.Environ())
	Dir       string   // working dir, "" = inherit
	DependsOn []string // names that must be Ready before this one first starts
	// Ready is the readiness probe, polled every Options.ProbeInterval while the
	// process runs. nil means "ready as soon as the process has started".
	Ready       func(ctx context.Context) error
	StopTimeout time.Duration // SIGTERM then SIGKILL after this; 0 = Options.StopTimeout
	// Oneshot marks a task that runs to completion (e.g. importing images):
	// exit status 0 makes it done, which counts as ready for its dependents,
	// and it is not started again; any other exit is restarted with backoff
	// like a daemon's. Ready is not used.
	Oneshot bool
	// KeepChildren limits signals and the clean-up after an exit to the
	// main process, leaving the processes it started alive (systemd's
	// KillMode=process): containerd's shims keep the pods running while
	// containerd itself restarts.
	KeepChildren bool
	// MemoryLow and MemoryHigh (bytes; 0 = none) are written to the
	// service's cgroup's memory.low and memory.high when Options.CgroupRoot
	// is set and the memory controller is there (left out quietly where it
	// is not). Both are soft: memory.low keeps the kernel from reclaiming
	// the service's memory while others have some to give, memory.high
	// throttles the service instead of letting it run the machine out of
	// memory. There is no memory.max: a throttled service recovers, an
	// OOM-killed one starts from nothing.
	MemoryLow, MemoryHigh uint64
}

// Options tune the supervisor; zero values take the defaults noted.
type Options struct {
	LogDir         string        // each service's output (stdout+stderr) goes to LogDir/<name>.log ("" = no files)
	MaxLogBytes    int64         // rotate <name>.log -> <name>.log.1 ... when it passes this size (default 10 MiB)
	MaxLogFiles    int           // rotated files kept (default 3)
	Output         io.Writer     // if non-nil, every output line also written here as "<name> | <line>\n", and supervisor events as "supervisor | ..." lines
	BackoffBase    time.Duration // first restart delay (default 1s)
	BackoffMax     time.Duration // cap (default 30s)
	StableAfter    time.Duration // a run at least this long resets backoff and crash-loop count (default 60s)
	CrashLoopAfter int           // this many consecutive short runs => state crash-loop (default 3)
	ProbeInterval  time.Duration // default 500ms
	StopTimeout    time.Duration // default 15s
	// CgroupRoot, if non-empty (e.g. /sys/fs/cgroup/kiln, cgroup v2), puts
	// each service in CgroupRoot/<name>, created if missing, with the
	// Spec's memory settings. Enabling controllers in CgroupRoot's
	// cgroup.subtree_control is left to whoever owns CgroupRoot; the
	// supervisor sets CgroupRoot's memory.low to the sum of its services'
	// MemoryLow (if any), since a cgroup is protected only as far as its
	// parent is.
	CgroupRoot string
	// LogFiles are more logs that `logs NAME` serves by name, files other
	// programs write (the API server's audit log): their last
	// MaxLogFileTail bytes, whole lines.
	LogFiles map[string]string
	// Boot, if set, gives the boot's stage lines for Status (PID 1's
	// console record).
	Boot func() []nodeapi.BootStage
	// Annotate, if set, adds to Status what the node knows beyond its
	// services (whether it holds the API's virtual IP). It is called on
	// every Status, without the supervisor's lock.
	Annotate func(*nodeapi.Status)
}

// MaxLogFileTail is how much of the end of a LogFiles file `logs` serves.
const MaxLogFileTail = 256 << 10

const (
	defaultMaxLogBytes    = 10 << 20
	defaultMaxLogFiles    = 3
	defaultBackoffBase    = time.Second
	defaultBackoffMax     = 30 * time.Second
	defaultStableAfter    = 60 * time.Second
	defaultCrashLoopAfter = 3
	defaultProbeInterval  = 500 * time.Millisecond
	defaultStopTimeout    = 15 * time.Second
)

func (o Options) withDefaults() Options {
	setDur := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	if o.MaxLogBytes <= 0 {
		o.MaxLogBytes = defaultMaxLogBytes
	}
	if o.MaxLogFiles <= 0 {
		o.MaxLogFiles = defaultMaxLogFiles
	}
	if o.CrashLoopAfter <= 0 {
		o.CrashLoopAfter = defaultCrashLoopAfter
	}
	setDur(&o.BackoffBase, defaultBackoffBase)
	setDur(&o.BackoffMax, defaultBackoffMax)
	if o.BackoffMax < o.BackoffBase {
		o.BackoffMax = o.BackoffBase
	}
	setDur(&o.StableAfter, defaultStableAfter)
	setDur(&o.ProbeInterval, defaultProbeInterval)
	setDur(&o.StopTimeout, defaultStopTimeout)
	return o
}

// satisfied reports whether a service in this state lets its dependents
// start: a ready daemon or a completed task.
func satisfied(st nodeapi.State) bool { return st == nodeapi.StateReady || st == nodeapi.StateDone }

// The timeline is kept whole up to maxEvents; past that the oldest events
// are dropped, except the first keepFirstEvents, which tell how the node came
// up. A service crash-looping for weeks must not grow memory without bound.
const (
	maxEvents       = 2000
	keepFirstEvents = 200
)

// Supervisor runs a fixed set of services. Create it with New, drive it with
// Run; every other method is safe to call from any goroutine at any time.
type Supervisor struct {
	opts     Options
	services []*service // dependency (start) order
	byName   map[string]*service
	out      *prefixWriter // nil if Options.Output is nil
	spawner  *spawner

	// gate makes "stopping begins" and "a process is started" mutually
	// exclusive: starts hold it shared, Run takes it exclusively to set
	// stopping. So once stopping is set, no process is started any more.
	gate     sync.RWMutex
	stopping atomic.Bool

	mu       sync.Mutex // guards everything below and every service's st
	ran      bool
	started  time.Time
	timeline []nodeapi.Event
	recorded uint64        // events ever added to the timeline, dropped ones included
	changed  chan struct{} // closed and replaced on every change: a broadcast for WaitReady and dependency waits

	panicMu sync.Mutex
	panics  map[string]int // times each panic (its first line) was reported
}

// New checks the specs and returns a supervisor for them. Names must be
// non-empty, unique and usable as file names, Path must be set, every
// dependency must name a service, and dependencies must not form a cycle (the
// error names it). Zero options take their defaults.
func New(opts Options, specs []Spec) (*Supervisor, error) {
	if err := validate(specs); err != nil {
		return nil, err
	}
	order, err := startOrder(specs)
	if err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	s := &Supervisor{
		opts:    opts,
		byName:  make(map[string]*service, len(specs)),
		changed: make(chan struct{}),
	}
	width := len(supervisorPrefix)
	for _, sp := range order {
		width = max(width, len(sp.Name))
	}
	if opts.Output != nil {
		s.out = &prefixWriter{w: opts.Output, width: width}
	}
	for _, sp := range order {
		sv := newService(sp, opts, s.out)
		s.services = append(s.services, sv)
		s.byName[sp.Name] = sv
	}
	for _, sv := range s.services {
		for _, d := range sv.spec.DependsOn {
			dep := s.byName[d]
			sv.deps = append(sv.deps, dep)
			dep.dependents = append(dep.dependents, sv)
		}
	}
	return s, nil
}

// Run starts the services and supervises them until ctx is cancelled, then
// stops them, dependents before their dependencies, and returns nil once
// every child has exited. It returns an error without starting anything if
// the log directory or the cgroups cannot be set up, and if called twice.
func (s *Supervisor) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.ran {
		s.mu.Unlock()
		return errors.New("supervisor: Run called more than once")
	}
	s.ran = true
	s.started = time.Now()
	s.mu.Unlock()

	if err := s.setup(); err != nil {
		s.teardown()
		return err
	}
	defer s.teardown()
	s.spawner = newSpawner()
	defer s.spawner.close()

	var wg sync.WaitGroup
	for _, sv := range s.services {
		wg.Go(func() {
			defer close(sv.done)
			// runService survives a panic in a run (runOnce); this is
			// for one anywhere else in it: supervise the service again.
			for {
				err := panics.Do(s.reportPanic, "the supervision of "+sv.spec.Name, func() { s.runService(ctx, sv) })
				if err == nil || ctxutil.Sleep(ctx, s.opts.BackoffMax) != nil {
					return
				}
			}
		})
	}

	<-ctx.Done()
	s.gate.Lock()
	s.stopping.Store(true)
	s.gate.Unlock()
	s.say("stopping all services")
	s.notify()

	// Each service is stopped as soon as everything that depends on it
	// has stopped: a chain stops strictly in reverse, siblings in parallel.
	for _, sv := range s.services {
		wg.Go(func() {
			// Its dependencies stop after it even if recording the
			// stop panics.
			defer close(sv.stopped)
			for _, d := range sv.dependents {
				<-d.stopped
			}
			close(sv.stopCh)
			<-sv.done
			_ = panics.Do(s.reportPanic, "the stop of "+sv.spec.Name, func() {
				s.update(sv, func(st *nodeapi.ServiceStatus) []event {
					detail := ""
					if st.State == nodeapi.StateStopping {
						detail = st.LastExit
					}
					st.State = nodeapi.StateStopped
					st.PID = 0
					st.StartedAt = time.Time{}
					st.NextStart = time.Time{}
					st.Backoff = 0
					return []event{{what: "stopped", detail: detail}}
				})
			})
		})
	}
	wg.Wait()
	s.say("all services stopped")
	return nil
}

// Status returns a snapshot of every service and the timeline.
func (s *Supervisor) Status() nodeapi.Status {
	s.mu.Lock()
	st := nodeapi.Status{
		Started:  s.started,
		Services: make([]nodeapi.ServiceStatus, len(s.services)),
		Timeline: append([]nodeapi.Event(nil), s.timeline...),
	}
	for i, sv := range s.services {
		st.Services[i] = sv.st
	}
	s.mu.Unlock()
	// Reading cgroup and proc files needs no lock: the paths depend on
	// immutable options only.
	if s.opts.CgroupRoot != "" {
		for i := range st.Services {
			st.Services[i].MemoryBytes = readUint(filepath.Join(s.opts.CgroupRoot, st.Services[i].Name, "memory.current"))
		}
	}
	st.Memory = ReadMachineMemory()
	if s.opts.Boot != nil {
		st.Boot = s.opts.Boot()
	}
	if s.opts.Annotate != nil {
		s.opts.Annotate(&st)
	}
	return st
}

// readUint reads a file holding one decimal number (0 if it cannot).
func readUint(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// ReadMachineMemory reads the machine's memory from /proc/meminfo; nil if
// it cannot.
func ReadMachineMemory() *nodeapi.MachineMemory { return readMeminfo("/proc/meminfo") }

// readMeminfo reads MemTotal and MemAvailable (in kB there).
func readMeminfo(path string) *nodeapi.MachineMemory {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return nodeapi.ParseMeminfo(string(b))
}

// WaitReady blocks until every named service (every service, if none is
// named) is ready (or, for a Oneshot, done) at the same moment. It fails at once for an unknown name,
// when ctx is done, and when the supervisor starts stopping, since nothing
// becomes ready after that; the error says which services were not ready.
func (s *Supervisor) WaitReady(ctx context.Context, names ...string) error {
	targets := s.services
	if len(names) > 0 {
		targets = make([]*service, 0, len(names))
		for _, n := range names {
			sv, ok := s.byName[n]
			if !ok {
				return fmt.Errorf("supervisor: unknown service %q", n)
			}
			targets = append(targets, sv)
		}
	}
	for {
		s.mu.Lock()
		var waiting []string
		for _, sv := range targets {
			if !satisfied(sv.st.State) {
				waiting = append(waiting, fmt.Sprintf("%s (%s)", sv.spec.Name, sv.st.State))
			}
		}
		changed := s.changed
		s.mu.Unlock()
		if len(waiting) == 0 {
			return nil
		}
		if s.stopping.Load() {
			return fmt.Errorf("supervisor: stopping; not ready: %s", strings.Join(waiting, ", "))
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%w; not ready: %s", ctx.Err(), strings.Join(waiting, ", "))
		}
	}
}

// EventsSince returns the timeline's events from the n-th on, counting
// every event the supervisor has recorded from 0 (the ones the capped
// timeline has dropped included), and the count to pass next time. Events
// dropped from the timeline before they were asked for are skipped. A
// caller that follows the timeline (init/up prints every exit) passes 0
// first, then what it got back.
func (s *Supervisor) EventsSince(n uint64) ([]nodeapi.Event, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := s.recorded
	if n >= total {
		return nil, total
	}
	// The timeline holds events 0..keepFirstEvents-1 and the last
	// len(timeline)-keepFirstEvents; the ones between were dropped.
	dropped := total - uint64(len(s.timeline))
	pos := n
	switch {
	case n < keepFirstEvents || dropped == 0:
	case n < keepFirstEvents+dropped:
		pos = keepFirstEvents
	default:
		pos = n - dropped
	}
	return append([]nodeapi.Event(nil), s.timeline[pos:]...), total
}

// Logs returns the most recent lines of a service's output, oldest first,
// and false if there is no such service.
func (s *Supervisor) Logs(name string) ([]string, bool) {
	sv, ok := s.byName[name]
	if !ok {
		return nil, false
	}
	return sv.logs.lines(), true
}

// event is a timeline entry in the making; detail only goes to Output.
type event struct {
	what, detail string
}

// update changes a service's status under the lock; f returns the events
// the change amounts to. Waiters are woken, and the events are written to
// Output after the lock is released so a slow console never stalls Status.
func (s *Supervisor) update(sv *service, f func(st *nodeapi.ServiceStatus) []event) {
	evs := s.record(sv, f)
	for _, e := range evs {
		msg := sv.spec.Name + ": " + e.what
		if e.detail != "" {
			msg += " (" + e.detail + ")"
		}
		s.say(msg)
	}
}

// record is update's part under the lock, released by a defer: a panic
// in f (reported by whoever guards the caller) must not leave the
// supervisor locked.
func (s *Supervisor) record(sv *service, f func(st *nodeapi.ServiceStatus) []event) []event {
	s.mu.Lock()
	defer s.mu.Unlock()
	evs := f(&sv.st)
	now := time.Since(s.started)
	for _, e := range evs {
		s.timeline = append(s.timeline, nodeapi.Event{At: now, Service: sv.spec.Name, What: e.what})
		s.recorded++
	}
	if n := len(s.timeline); n > maxEvents {
		s.timeline = append(s.timeline[:keepFirstEvents], s.timeline[keepFirstEvents+n-maxEvents:]...)
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return evs
}

// maxPanicKinds bounds the panics reportPanic counts.
const maxPanicKinds = 256

// reportPanic reports a panic caught in one of the supervisor's
// goroutines (internal/panics: "kiln: PANIC in <what>: <value>" and the
// stack) as supervisor lines on Output, or on standard error without an
// Output (under PID 1, the console). The first of each kind (its first
// line) is reported whole; repeats, such as a reader panicking on every
// line, as one line at the 2nd, 4th, 8th, ... time, so a panic in a loop
// cannot flood the console.
func (s *Supervisor) reportPanic(msg string) {
	first, _, _ := strings.Cut(msg, "\n")
	s.panicMu.Lock()
	if s.panics == nil || len(s.panics) >= maxPanicKinds {
		s.panics = map[string]int{}
	}
	s.panics[first]++
	n := s.panics[first]
	s.panicMu.Unlock()
	switch {
	case n == 1:
	case n&(n-1) == 0:
		msg = fmt.Sprintf("%s (%d times so far; stack as the first time)\n", first, n)
	default:
		return
	}
	if s.out == nil {
		_, _ = io.WriteString(os.Stderr, msg)
		return
	}
	for _, l := range strings.Split(strings.TrimRight(msg, "\n"), "\n") {
		s.out.line(supervisorPrefix, []byte(l))
	}
}

// notify wakes everyone waiting for a change without changing anything.
func (s *Supervisor) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// say writes a supervisor line to Output, if there is one.
func (s *Supervisor) say(msg string) {
	if s.out != nil {
		s.out.line(supervisorPrefix, []byte(msg))
	}
}
