package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrUnknownService is Restart's error for a name no Spec has.
var ErrUnknownService = errors.New("unknown service")

// Restart stops the service's process (SIGTERM, then SIGKILL after its
// stop timeout) and starts it again at once, without backoff: the way to
// make a component read files it reads only at start (the etcd entry
// point applies a snapshot to restore then). A restart asked for is not
// an exit that counts towards a crash loop.
//
// It returns once a new process has been started (its start may fail:
// then it backs off as after any exit), when ctx ends, or when the
// supervisor stops first. A service in backoff starts now; one waiting
// for its dependencies starts when they are ready, as it would have.
// Restarts asked for while one is under way are served by the same new
// process. Tasks (Spec.Oneshot) are not restarted.
func (s *Supervisor) Restart(ctx context.Context, name string) error {
	sv, ok := s.byName[name]
	switch {
	case !ok:
		return fmt.Errorf("supervisor: %w %q", ErrUnknownService, name)
	case sv.spec.Oneshot:
		return fmt.Errorf("supervisor: %s is a task that runs to completion; it is not restarted", name)
	case s.stopping.Load():
		return fmt.Errorf("supervisor: stopping; %s is not restarted", name)
	}
	started := sv.requestRestart()
	select {
	case <-started:
		return nil
	case <-sv.done:
		return fmt.Errorf("supervisor: %s stopped before it was restarted", name)
	case <-ctx.Done():
		return fmt.Errorf("restarting %s: %w", name, ctx.Err())
	}
}

// requestRestart records a request and wakes the run or the backoff
// wait; the channel it returns is closed once a process has started
// after it.
func (sv *service) requestRestart() <-chan struct{} {
	sv.restartMu.Lock()
	defer sv.restartMu.Unlock()
	if sv.restartReq == nil {
		sv.restartReq = make(chan struct{})
	}
	select {
	case sv.restartSig <- struct{}{}:
	default: // already signalled
	}
	return sv.restartReq
}

// takeRestart is called before a process starts: that start serves the
// requests made so far, and their wake-up is spent. The function it
// returns tells their callers (once, however often it is called).
func (sv *service) takeRestart() func() {
	sv.restartMu.Lock()
	defer sv.restartMu.Unlock()
	req := sv.restartReq
	sv.restartReq = nil
	select {
	case <-sv.restartSig:
	default:
	}
	return sync.OnceFunc(func() {
		if req != nil {
			close(req)
		}
	})
}
