package supervisor

import (
	"kiln/configs/nodeapi"

	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"
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
	}
	if sv.stopTimeout <= 0 {
		sv.stopTimeout = opts.StopTimeout
	}
	return sv
}

// runService is the life of one service: wait for the dependencies, then
// run, and restart after every exit until the supervisor stops. Stopping is
// noticed at every wait, so a service that is waiting is simply not started
// again.
func (s *Supervisor) runService(ctx context.Context, sv *service) {
	defer close(sv.done)
	if !s.waitDeps(ctx, sv) {
		return
	}
	shortRuns := 0
	for attempt := 0; ; attempt++ {
		r, ok := s.runOnce(ctx, sv, attempt > 0)
		if !ok {
			return
		}
		now := time.Now()
		what := "exited: " + r.exit
		if r.startErr {
			what = "start failed: " + r.exit
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
			return
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
			return
		}
		shortRuns = nextShortRuns(shortRuns, r.ran, s.opts.StableAfter)
		delay := backoffDelay(s.opts.BackoffBase, s.opts.BackoffMax, shortRuns)
		s.update(sv, func(st *nodeapi.ServiceStatus) []event {
			st.State = nodeapi.StateBackoff
			st.PID = 0
			st.StartedAt = time.Time{}
			st.LastExit = r.exit
			st.LastExitAt = now
			st.NextStart = now.Add(delay)
			st.Backoff = delay
			evs := []event{{what: what, detail: "after " + r.ran.Round(time.Millisecond).String()}}
			if shortRuns >= s.opts.CrashLoopAfter {
				st.State = nodeapi.StateCrashLoop
				if shortRuns == s.opts.CrashLoopAfter {
					evs = append(evs, event{what: "crash-loop", detail: fmt.Sprintf("%d short runs in a row", shortRuns)})
				}
			}
			return append(evs, event{what: "restarting in " + delay.String()})
		})
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
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
	exit     string        // "exit status 1", "signal: killed", or the start error
	startErr bool          // the process could not be started at all
	ran      time.Duration // from start to exit
	stopped  bool          // ended because Run stopped the service
}

// runOnce starts the service's process once and waits for it to end, or
// stops it when the service's turn to stop comes. It reports false, having
// done nothing, if the supervisor is already stopping.
func (s *Supervisor) runOnce(ctx context.Context, sv *service, restart bool) (runResult, bool) {
	s.gate.RLock()
	if s.stopping.Load() || ctx.Err() != nil {
		s.gate.RUnlock()
		return runResult{}, false
	}
	p, err := s.start(sv)
	s.gate.RUnlock()
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
	go func() {
		defer close(probeDone)
		if sv.spec.Ready != nil && !sv.spec.Oneshot {
			s.probe(probeCtx, sv)
		}
	}()

	var waitErr error
	stopped := false
	select {
	case waitErr = <-p.exited:
	case <-sv.stopCh:
		stopped = true
		// Stop probing first, so no probe result turns "stopping" back.
		stopProbe()
		<-probeDone
		s.update(sv, func(st *nodeapi.ServiceStatus) []event {
			st.State = nodeapi.StateStopping
			return []event{{what: "stopping", detail: fmt.Sprintf("SIGTERM to pid %d", p.pid)}}
		})
		var killed bool
		waitErr, killed = p.terminate(sv.stopTimeout)
		if killed {
			s.update(sv, func(*nodeapi.ServiceStatus) []event {
				return []event{{what: "killed", detail: fmt.Sprintf("still running %s after SIGTERM", sv.stopTimeout)}}
			})
		}
	}
	ran := time.Since(startedAt)
	stopProbe()
	<-probeDone
	p.cleanup()
	return runResult{exit: describeExit(waitErr), ran: ran, stopped: stopped}, true
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
		err := callProbe(ctx, sv.spec.Ready, timeout)
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
// returns, never a stuck supervisor; a panicking probe is a failed probe,
// not a dead node.
func callProbe(ctx context.Context, probe func(context.Context) error, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				res <- fmt.Errorf("probe panicked: %v", r)
			}
		}()
		res <- probe(ctx)
	}()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return fmt.Errorf("probe: %w", ctx.Err())
	}
}
