package supervisor

import (
	"kiln/configs/nodeapi"

	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"kiln/internal/ctxutil"
	"kiln/internal/panics"
)

// service is one Spec plus its live state.
type service struct {
	spec        Spec
	stopTimeout time.Duration
	deps        []*service // what it waits for before its first start
	dependents  []*service // what must have stopped before it stops
	logs        *sink

	cgroupDir string // "" when cgroups are off
	cgroupFD  int    // open on cgroupDir while Run runs, else -1

	st nodeapi.ServiceStatus // guarded by Supervisor.mu

	stopCh  chan struct{} // closed by Run when this service's turn to stop has come
	done    chan struct{} // closed when runService has returned (no process left)
	stopped chan struct{} // closed when the service is marked stopped; dependencies wait for it

	// Restart's requests (restart.go): restartSig wakes the run or the
	// backoff wait; restartReq, closed by the next start, is what the
	// callers wait for (nil: none pending).
	restartMu  sync.Mutex
	restartReq chan struct{}
	restartSig chan struct{}
}

func newService(sp Spec, opts Options, out *prefixWriter) *service {
	sv := &service{
		spec:        sp,
		stopTimeout: sp.StopTimeout,
		logs:        newSink(sp.Name, out),
		cgroupFD:    -1,
		st:          nodeapi.ServiceStatus{Name: sp.Name, State: nodeapi.StateWaiting},
		stopCh:      make(chan struct{}),
		done:        make(chan struct{}),
		stopped:     make(chan struct{}),
		restartSig:  make(chan struct{}, 1),
	}
	if sv.stopTimeout <= 0 {
		sv.stopTimeout = opts.StopTimeout
	}
	return sv
}

// runService is the life of one service: wait for the dependencies, then
// run, and restart after every exit until the supervisor stops. Stopping is
// noticed at every wait, so a service that is waiting is simply not started
// again. A panic in a run is an exit (runOnce); one while recording an
// exit still leads to a restart, after the longest backoff.
func (s *Supervisor) runService(ctx context.Context, sv *service) {
	if !s.waitDeps(ctx, sv) {
		return
	}
	shortRuns := 0
	for attempt := 0; ; attempt++ {
		r, ok := s.runOnce(ctx, sv, attempt > 0)
		if !ok {
			return
		}
		var delay time.Duration
		again := false
		err := panics.Do(s.reportPanic, "the supervision of "+sv.spec.Name, func() {
			delay, again = s.ended(sv, r, &shortRuns)
		})
		if err != nil {
			delay, again = s.opts.BackoffMax, !r.stopped && !s.stopping.Load()
		}
		if !again {
			return
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-sv.restartSig:
			// Restart asked for: start now. The start serves the
			// request (takeRestart).
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// ended records how a run ended and says whether to start the service
// again, and after what delay.
func (s *Supervisor) ended(sv *service, r runResult, shortRuns *int) (time.Duration, bool) {
	now := time.Now()
	what := "exited: " + r.exit
	if r.startErr {
		what = "start failed: " + r.exit
	}
	if r.restarted && !s.stopping.Load() {
		// Asked for (Restart): no crash, no backoff; "started"
		// follows at once.
		s.update(sv, func(st *nodeapi.ServiceStatus) []event {
			st.State = nodeapi.StateBackoff
			st.PID = 0
			st.StartedAt = time.Time{}
			st.LastExit = r.exit
			st.LastExitAt = now
			st.NextStart = now
			st.Backoff = 0
			return []event{{what: "exited for the restart: " + r.exit}}
		})
		return 0, true
	}
	if r.stopped || s.stopping.Load() {
		s.update(sv, func(st *nodeapi.ServiceStatus) []event {
			st.State = nodeapi.StateStopping
			st.PID = 0
			st.StartedAt = time.Time{}
			st.LastExit = r.exit
			st.LastExitAt = now
			if r.stopped {
				return nil // "stopped" follows, with the exit as detail
			}
			return []event{{what: what}}
		})
		return 0, false
	}

	if sv.spec.Oneshot && !r.startErr && r.exit == describeExit(nil) {
		s.update(sv, func(st *nodeapi.ServiceStatus) []event {
			st.State = nodeapi.StateDone
			st.PID = 0
			st.StartedAt = time.Time{}
			st.LastExit = r.exit
			st.LastExitAt = now
			if st.ReadyAt.IsZero() {
				st.ReadyAt = now
			}
			return []event{{what: "done", detail: "after " + r.ran.Round(time.Millisecond).String()}}
		})
		return 0, false
	}
	*shortRuns = nextShortRuns(*shortRuns, r.ran, s.opts.StableAfter)
	delay := backoffDelay(s.opts.BackoffBase, s.opts.BackoffMax, *shortRuns)
	n := *shortRuns
	s.update(sv, func(st *nodeapi.ServiceStatus) []event {
		st.State = nodeapi.StateBackoff
		st.PID = 0
		st.StartedAt = time.Time{}
		st.LastExit = r.exit
		st.LastExitAt = now
		st.NextStart = now.Add(delay)
		st.Backoff = delay
		evs := []event{{what: what, detail: "after " + r.ran.Round(time.Millisecond).String()}}
		if n >= s.opts.CrashLoopAfter {
			st.State = nodeapi.StateCrashLoop
			if n == s.opts.CrashLoopAfter {
				evs = append(evs, event{what: "crash-loop", detail: fmt.Sprintf("%d short runs in a row", n)})
			}
		}
		return append(evs, event{what: "restarting in " + delay.String()})
	})
	return delay, true
}

// waitDeps blocks until every dependency is ready at the same moment; false
// means the supervisor started stopping first.
func (s *Supervisor) waitDeps(ctx context.Context, sv *service) bool {
	for {
		s.mu.Lock()
		ready := true
		for _, d := range sv.deps {
			ready = ready && satisfied(d.st.State)
		}
		changed := s.changed
		s.mu.Unlock()
		if ready {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// runResult is how one run of a service ended.
type runResult struct {
	exit      string        // "exit status 1", "signal: killed", or the start error
	startErr  bool          // the process could not be started at all
	ran       time.Duration // from start to exit
	stopped   bool          // ended because Run stopped the service
	restarted bool          // ended because Restart stopped it
}

// runOnce starts the service's process once and waits for it to end, or
// stops it when the service's turn to stop comes. It reports false, having
// done nothing, if the supervisor is already stopping.
//
// A panic while supervising the run (a bug in kiln, not in the component)
// is reported and treated as an exit: the process, if it runs, is stopped
// (SIGTERM, SIGKILL after the stop timeout) and cleaned up, and the run
// ends as "exited: the supervision of NAME panicked: VALUE", restarted
// with backoff like any other exit.
func (s *Supervisor) runOnce(ctx context.Context, sv *service, restart bool) (runResult, bool) {
	var rn run
	var res runResult
	ok := false
	err := panics.Do(s.reportPanic, "the supervision of "+sv.spec.Name, func() {
		res, ok = s.runProcess(ctx, sv, restart, &rn)
	})
	if err == nil {
		return res, ok
	}
	_ = panics.Do(s.reportPanic, "the clean-up after "+sv.spec.Name, func() { rn.abandon(sv.stopTimeout) })
	res = runResult{exit: err.Error(), stopped: rn.stopped}
	if !rn.startedAt.IsZero() {
		res.ran = time.Since(rn.startedAt)
	}
	return res, true
}

// run is what a run that panicked must not leave behind: its process and
// its readiness probing.
type run struct {
	p         *process // nil once cleaned up
	startedAt time.Time
	stopProbe context.CancelFunc
	probeDone chan struct{}
	stopped   bool // the service's turn to stop had come
}

// abandon stops the probing and the process of a run that panicked.
func (rn *run) abandon(stopTimeout time.Duration) {
	if rn.stopProbe != nil {
		rn.stopProbe()
		<-rn.probeDone
	}
	p := rn.p
	if p == nil {
		return
	}
	rn.p = nil
	if !p.hasExited() {
		p.terminate(stopTimeout)
	}
	p.cleanup()
}

// startGated starts the service's process unless the supervisor is
// stopping (false). The gate is released by a defer, so a panic cannot
// leave Run waiting for it.
func (s *Supervisor) startGated(ctx context.Context, sv *service) (*process, error, bool) {
	s.gate.RLock()
	defer s.gate.RUnlock()
	if s.stopping.Load() || ctx.Err() != nil {
		return nil, nil, false
	}
	p, err := s.start(sv)
	return p, err, true
}

// runProcess is runOnce's work; rn tracks what it has started.
func (s *Supervisor) runProcess(ctx context.Context, sv *service, restart bool, rn *run) (runResult, bool) {
	// This start serves every Restart asked for so far.
	served := sv.takeRestart()
	p, err, ok := s.startGated(ctx, sv)
	if !ok {
		return runResult{}, false
	}
	defer served()
	startedAt := time.Now()
	if err != nil {
		s.update(sv, func(st *nodeapi.ServiceStatus) []event {
			if restart {
				st.Restarts++
			}
			return nil // runService records the failure like an exit
		})
		return runResult{exit: err.Error(), startErr: true}, true
	}
	rn.p, rn.startedAt = p, startedAt
	s.update(sv, func(st *nodeapi.ServiceStatus) []event {
		if restart {
			st.Restarts++
		}
		st.State = nodeapi.StateStarting
		st.PID = p.pid
		st.StartedAt = startedAt
		st.NextStart = time.Time{}
		st.Backoff = 0
		evs := []event{{what: "started", detail: fmt.Sprintf("pid %d", p.pid)}}
		if sv.spec.Ready == nil && !sv.spec.Oneshot {
			evs = append(evs, becomeReady(st, startedAt)...)
		}
		return evs
	})

	probeCtx, stopProbe := context.WithCancel(ctx)
	probeDone := make(chan struct{})
	rn.stopProbe, rn.probeDone = stopProbe, probeDone
	go func() {
		defer close(probeDone)
		if sv.spec.Ready != nil && !sv.spec.Oneshot {
			s.probeLoop(probeCtx, sv)
		}
	}()
	callHook(hookRun, sv.spec.Name)

	var waitErr error
	stopped, restarted := false, false
	// The run has started: the Restarts that asked for it may return.
	served()
	select {
	case <-p.exited:
		waitErr = p.waitErr
	case <-sv.restartSig:
		restarted = true
		stopProbe()
		<-probeDone
		s.update(sv, func(*nodeapi.ServiceStatus) []event {
			return []event{{what: "restarting", detail: fmt.Sprintf("asked for; SIGTERM to pid %d", p.pid)}}
		})
		waitErr = s.terminate(sv, p)
	case <-sv.stopCh:
		stopped, rn.stopped = true, true
		// Stop probing first, so no probe result turns "stopping" back.
		stopProbe()
		<-probeDone
		s.update(sv, func(st *nodeapi.ServiceStatus) []event {
			st.State = nodeapi.StateStopping
			return []event{{what: "stopping", detail: fmt.Sprintf("SIGTERM to pid %d", p.pid)}}
		})
		waitErr = s.terminate(sv, p)
	}
	ran := time.Since(startedAt)
	stopProbe()
	<-probeDone
	rn.p = nil // cleaned up here, once, even if the clean-up panics
	p.cleanup()
	return runResult{exit: describeExit(waitErr), ran: ran, stopped: stopped, restarted: restarted}, true
}

// describeExit words how a process ended the way exec does ("exit status
// 1", "signal: killed"), including a clean exit, which is still an exit.
func describeExit(err error) string {
	if err == nil {
		return "exit status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.Error()
	}
	return err.Error()
}

// becomeReady marks a running service ready, remembering the first time.
func becomeReady(st *nodeapi.ServiceStatus, now time.Time) []event {
	if st.State != nodeapi.StateStarting {
		return nil
	}
	st.State = nodeapi.StateReady
	if st.ReadyAt.IsZero() {
		st.ReadyAt = now
	}
	return []event{{what: "ready"}}
}

// probeFailuresToUnready is how many probes in a row must fail before a
// ready service counts as not ready again: one slow answer from a busy
// apiserver should not flap the state.
const probeFailuresToUnready = 3

// probeLoop runs probe until ctx is done. A probe loop that panicked is
// reported and started again after five probe intervals: a bug in kiln's
// probing is no reason to restart a running component.
func (s *Supervisor) probeLoop(ctx context.Context, sv *service) {
	for {
		err := panics.Do(s.reportPanic, "the readiness probing of "+sv.spec.Name, func() { s.probe(ctx, sv) })
		if err == nil || ctxutil.Sleep(ctx, 5*s.opts.ProbeInterval) != nil {
			return
		}
	}
}

// probe polls the readiness probe while the process runs: every
// ProbeInterval until it first passes, then five times slower, dropping back
// to starting (and the fast pace) after probeFailuresToUnready failures in a
// row. It returns as soon as ctx is done, even if a probe hangs.
func (s *Supervisor) probe(ctx context.Context, sv *service) {
	fast := s.opts.ProbeInterval
	slow := 5 * fast
	timeout := max(2*time.Second, 4*fast)
	ready, failures := false, 0
	t := time.NewTimer(fast)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		callHook(hookProbe, sv.spec.Name)
		err := callProbe(ctx, sv.spec.Ready, timeout, s.reportPanic, "the readiness probe of "+sv.spec.Name)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			failures = 0
			if !ready {
				ready = true
				now := time.Now()
				s.update(sv, func(st *nodeapi.ServiceStatus) []event { return becomeReady(st, now) })
			}
		case ready:
			failures++
			if failures >= probeFailuresToUnready {
				ready, failures = false, 0
				s.update(sv, func(st *nodeapi.ServiceStatus) []event {
					if st.State != nodeapi.StateReady {
						return nil
					}
					st.State = nodeapi.StateStarting
					return []event{{what: "not ready", detail: err.Error()}}
				})
			}
		}
		if ready {
			t.Reset(slow)
		} else {
			t.Reset(fast)
		}
	}
}

// callProbe runs one probe with a deadline. The probe runs in its own
// goroutine so that one ignoring its context costs a goroutine until it
// returns, never a stuck supervisor; a panicking probe is reported and is
// a failed probe, not a dead node.
func callProbe(ctx context.Context, probe func(context.Context) error, timeout time.Duration, report func(string), what string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res := make(chan error, 1)
	go func() {
		res <- panics.Guard(report, what, func() error { return probe(ctx) })
	}()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return fmt.Errorf("probe: %w", ctx.Err())
	}
}

// Points at which testHook is called.
const (
	hookRun   = "run"   // a run, once its process has started
	hookProbe = "probe" // each pass of the probe loop, before the probe
	hookLine  = "line"  // each output line, before it is kept
)

// testHook, when a test sets it, is called at points where a panic must be
// survived, with the point and the service's name. Nil outside tests.
var testHook atomic.Pointer[func(point, service string)]

func callHook(point, service string) {
	if h := testHook.Load(); h != nil {
		(*h)(point, service)
	}
}

// terminate stops p (SIGTERM, then SIGKILL after sv's stop timeout) and
// records a kill in sv's events; it returns p's wait error.
func (s *Supervisor) terminate(sv *service, p *process) error {
	waitErr, killed := p.terminate(sv.stopTimeout)
	if killed {
		s.update(sv, func(*nodeapi.ServiceStatus) []event {
			return []event{{what: "killed", detail: fmt.Sprintf("still running %s after SIGTERM", sv.stopTimeout)}}
		})
	}
	return waitErr
}
