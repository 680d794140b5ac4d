package supervisor

import (
	"kiln/configs/nodeapi"

	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// chain is a -> b -> c (c depends on b, b on a), listed backwards so that
// the start order has to come from the dependencies. Each is ready once its
// child has created its ready file, a little after starting.
func chain(dir string) []Spec {
	var specs []Spec
	for _, n := range []string{"c", "b", "a"} {
		sp := helperSpec(dir, n, "serve")
		sp.Env = append(sp.Env, "KILN_READY_AFTER=50ms")
		sp.Ready = fileProbe(readyFile(dir, n))
		switch n {
		case "c":
			sp.DependsOn = []string{"b"}
		case "b":
			sp.DependsOn = []string{"a"}
		}
		specs = append(specs, sp)
	}
	return specs
}

func waitReady(t *testing.T, r *running, names ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx, names...); err != nil {
		t.Fatal(err)
	}
}

func TestDependencyOrder(t *testing.T) {
	dir := t.TempDir()
	r := startSupervisor(t, testOptions(), chain(dir)...)
	waitReady(t, r)

	want := []string{"start a", "ready a", "start b", "ready b", "start c", "ready c"}
	if got := readJournal(t, dir); !slices.Equal(got, want) {
		t.Fatalf("journal %q, want %q", got, want)
	}
	st := r.Status()
	var names []string
	for _, s := range st.Services {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"a", "b", "c"}) {
		t.Errorf("status order %v, want start order a b c", names)
	}
	for i := 1; i < len(st.Services); i++ {
		dep, s := st.Services[i-1], st.Services[i]
		if s.StartedAt.Before(dep.ReadyAt) {
			t.Errorf("%s started at %s, before %s was ready at %s", s.Name, s.StartedAt, dep.Name, dep.ReadyAt)
		}
		if s.State != nodeapi.StateReady || s.PID == 0 || s.Restarts != 0 {
			t.Errorf("%s: %+v", s.Name, s)
		}
	}
}

func TestReverseStop(t *testing.T) {
	dir := t.TempDir()
	r := startSupervisor(t, testOptions(), chain(dir)...)
	waitReady(t, r)
	var pids []int
	for _, s := range r.Status().Services {
		pids = append(pids, s.PID)
	}

	r.stop(t)

	journal := readJournal(t, dir)
	if got, want := journal[len(journal)-3:], []string{"stop c", "stop b", "stop a"}; !slices.Equal(got, want) {
		t.Errorf("children saw SIGTERM in order %q, want %q (journal %q)", got, want, journal)
	}
	st := r.Status()
	var stopped []string
	for _, e := range events(st, "") {
		if e.What == "stopped" {
			stopped = append(stopped, e.Service)
		}
	}
	if !slices.Equal(stopped, []string{"c", "b", "a"}) {
		t.Errorf("stopped events in order %v, want c b a", stopped)
	}
	for _, s := range st.Services {
		if s.State != nodeapi.StateStopped || s.PID != 0 || s.LastExit != "exit status 0" {
			t.Errorf("%s after stop: %+v", s.Name, s)
		}
	}
	for _, pid := range pids {
		if !processGone(pid) {
			t.Errorf("pid %d still exists after Run returned", pid)
		}
	}
}

func TestCrashLoopLeavesSiblingsAlone(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions()
	opts.StableAfter = 5 * time.Second // every run is short, however loaded the machine
	// Twice testOptions' delays: a timer firing late on a loaded machine
	// must not make consecutive delays look equal.
	opts.BackoffBase, opts.BackoffMax = 40*time.Millisecond, 320*time.Millisecond
	var out syncBuffer
	opts.Output = &out
	r := startSupervisor(t, opts, helperSpec(dir, "crash", "exit", "1"), helperSpec(dir, "steady", "serve"))

	eventually(t, 15*time.Second, func() error {
		s := r.service("crash")
		if s.State != nodeapi.StateCrashLoop || s.Restarts < 5 {
			return fmt.Errorf("crash is %s after %d restarts", s.State, s.Restarts)
		}
		if s.Backoff <= 0 || s.NextStart.IsZero() || s.LastExit != "exit status 1" || s.PID != 0 {
			return fmt.Errorf("crash-loop status incomplete: %+v", s)
		}
		return nil
	})
	st := r.Status()

	// From each exit to the next start is the backoff delay alone.
	var delays, startGaps []time.Duration
	exitAt, lastStart := time.Duration(-1), time.Duration(-1)
	exits, crashLoopAfterExits := 0, 0
	for _, e := range events(st, "crash") {
		switch {
		case strings.HasPrefix(e.What, "exited: "):
			exits++
			exitAt = e.At
		case e.What == "crash-loop":
			if crashLoopAfterExits != 0 {
				t.Errorf("second crash-loop event without a stable run in between")
			}
			crashLoopAfterExits = exits
		case e.What == "started":
			if exitAt >= 0 {
				delays = append(delays, e.At-exitAt)
			}
			if lastStart >= 0 {
				startGaps = append(startGaps, e.At-lastStart)
			}
			lastStart = e.At
		}
	}
	t.Logf("delays %v, start to start %v", delays, startGaps)
	if crashLoopAfterExits != 3 {
		t.Errorf("crash-loop declared after %d exits, want 3", crashLoopAfterExits)
	}
	// Start to start also includes how long the child took to start and
	// exit, which varies too much on a busy machine to compare; exit to
	// start is the delay alone.
	want := []time.Duration{40, 80, 160, 320, 320}
	if len(delays) < len(want) {
		t.Fatalf("only %d restarts in the timeline", len(delays))
	}
	for i, w := range want {
		if delays[i] < w*time.Millisecond {
			t.Errorf("restart %d after %s, want at least %s", i+1, delays[i], w*time.Millisecond)
		}
		if i > 0 && i < 4 && delays[i] <= delays[i-1] {
			t.Errorf("restart delays do not grow: %v", delays)
		}
	}

	if s := r.service("steady"); s.State != nodeapi.StateReady || s.Restarts != 0 {
		t.Errorf("steady sibling: %s with %d restarts", s.State, s.Restarts)
	}
	if !strings.Contains(out.String(), "supervisor | crash: crash-loop") {
		t.Errorf("no crash-loop line on Output:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "crash: exiting with 1") {
		t.Errorf("the child's own stderr is not on Output:\n%s", out.String())
	}
}

// A run of at least StableAfter forgives everything before it: however often
// such a service exits, it is restarted after BackoffBase and never called
// crash-looping.
func TestStableRunsResetBackoff(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions()
	opts.StableAfter = 100 * time.Millisecond
	r := startSupervisor(t, opts, helperSpec(dir, "flaky", "sleep-exit", "150ms"))
	eventually(t, 15*time.Second, func() error {
		if s := r.service("flaky"); s.Restarts < 4 {
			return fmt.Errorf("%d restarts", s.Restarts)
		}
		return nil
	})
	for _, e := range events(r.Status(), "flaky") {
		if e.What == "crash-loop" || (strings.HasPrefix(e.What, "restarting in") && e.What != "restarting in 20ms") {
			t.Errorf("after stable runs: event %q", e.What)
		}
	}
}

func TestKilledChildRestartsAndProbesAgain(t *testing.T) {
	dir := t.TempDir()
	sp := helperSpec(dir, "svc", "serve")
	sp.Env = append(sp.Env, "KILN_READY_AFTER=300ms")
	sp.Ready = fileProbe(readyFile(dir, "svc"))
	r := startSupervisor(t, testOptions(), sp)
	waitReady(t, r)
	before := r.service("svc")

	if err := syscall.Unlink(readyFile(dir, "svc")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		s := r.service("svc")
		if s.PID == 0 || s.PID == before.PID || s.State != nodeapi.StateStarting {
			return fmt.Errorf("want a new process, not yet ready: %+v", s)
		}
		return nil
	})
	waitReady(t, r)
	s := r.service("svc")
	if s.Restarts != 1 || s.LastExit != "signal: killed" || !s.ReadyAt.Equal(before.ReadyAt) {
		t.Errorf("after kill -9 and restart: %+v (before: %+v)", s, before)
	}
}

func TestReadinessDropsAndReturns(t *testing.T) {
	dir := t.TempDir()
	var healthy atomic.Bool
	healthy.Store(true)
	sp := helperSpec(dir, "svc", "serve")
	sp.Ready = func(ctx context.Context) error {
		if !healthy.Load() {
			return errors.New("unhealthy")
		}
		return fileProbe(readyFile(dir, "svc"))(ctx)
	}
	r := startSupervisor(t, testOptions(), sp)
	waitReady(t, r)
	first := r.service("svc").ReadyAt

	healthy.Store(false)
	eventually(t, 10*time.Second, func() error {
		if s := r.service("svc"); s.State != nodeapi.StateStarting {
			return fmt.Errorf("still %s", s.State)
		}
		return nil
	})
	healthy.Store(true)
	waitReady(t, r)

	s := r.service("svc")
	if s.Restarts != 0 || !s.ReadyAt.Equal(first) {
		t.Errorf("after a readiness blip: %+v (first ready %s)", s, first)
	}
	var whats []string
	for _, e := range events(r.Status(), "svc") {
		whats = append(whats, e.What)
	}
	if !slices.Equal(whats, []string{"started", "ready", "not ready", "ready"}) {
		t.Errorf("timeline %q", whats)
	}
}

// A probe that ignores its context must not keep Run from returning.
func TestHangingProbeDoesNotBlockStop(t *testing.T) {
	dir := t.TempDir()
	sp := helperSpec(dir, "svc", "serve")
	var probing atomic.Bool
	sp.Ready = func(context.Context) error {
		probing.Store(true)
		select {} // ignores its context
	}
	r := startSupervisor(t, testOptions(), sp)
	eventually(t, 10*time.Second, func() error {
		if !probing.Load() {
			return errors.New("probe not called yet")
		}
		return nil
	})
	start := time.Now()
	r.stop(t)
	if took := time.Since(start); took > time.Second {
		t.Errorf("stop took %s with a hanging probe", took)
	}
}

func TestStopTimeoutEscalatesToSIGKILL(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions()
	opts.StopTimeout = time.Minute // the spec's own timeout must win
	sp := helperSpec(dir, "stubborn", "ignore-term")
	sp.StopTimeout = 300 * time.Millisecond
	sp.Ready = fileProbe(readyFile(dir, "stubborn"))
	r := startSupervisor(t, opts, sp)
	waitReady(t, r)
	pid := r.service("stubborn").PID

	start := time.Now()
	r.stop(t)
	took := time.Since(start)

	if took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("stop took %s, want SIGKILL after 300ms", took)
	}
	s := r.service("stubborn")
	if s.State != nodeapi.StateStopped || s.LastExit != "signal: killed" {
		t.Errorf("after stop: %+v", s)
	}
	var whats []string
	for _, e := range events(r.Status(), "stubborn") {
		whats = append(whats, e.What)
	}
	if !slices.Equal(whats[len(whats)-3:], []string{"stopping", "killed", "stopped"}) {
		t.Errorf("timeline %q", whats)
	}
	if !processGone(pid) {
		t.Errorf("pid %d survived", pid)
	}
}

func TestMissingExecutableBacksOff(t *testing.T) {
	dir := t.TempDir()
	sp := helperSpec(dir, "ghost", "serve")
	sp.Path = "/nonexistent/kiln-no-such-binary"
	r := startSupervisor(t, testOptions(), sp, helperSpec(dir, "real", "serve"))
	eventually(t, 10*time.Second, func() error {
		s := r.service("ghost")
		if s.Restarts < 3 || (s.State != nodeapi.StateBackoff && s.State != nodeapi.StateCrashLoop) {
			return fmt.Errorf("ghost: %+v", s)
		}
		if !strings.Contains(s.LastExit, "no such file or directory") {
			return fmt.Errorf("last exit %q", s.LastExit)
		}
		return nil
	})
	waitReady(t, r, "real")
	r.stop(t)

	evs := events(r.Status(), "ghost")
	if !strings.HasPrefix(evs[0].What, "start failed: ") {
		t.Errorf("first event %q", evs[0].What)
	}
	if last := evs[len(evs)-1]; last.What != "stopped" {
		t.Errorf("last event %q, want stopped (nothing starts once stopping began)", last.What)
	}
}

func TestWaitReady(t *testing.T) {
	dir := t.TempDir()
	sp := helperSpec(dir, "never", "serve")
	sp.Ready = func(context.Context) error { return errors.New("no") }
	r := startSupervisor(t, testOptions(), sp)

	if err := r.WaitReady(context.Background(), "nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown name: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := r.WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "never") {
		t.Errorf("never ready: %v", err)
	}

	waiting := make(chan error, 1)
	go func() { waiting <- r.WaitReady(context.Background(), "never") }()
	r.stop(t)
	select {
	case err := <-waiting:
		if err == nil {
			t.Error("WaitReady returned nil for a service that never became ready")
		}
	case <-time.After(5 * time.Second):
		t.Error("WaitReady still blocked after Run returned")
	}
	if err := r.Run(context.Background()); err == nil {
		t.Error("a second Run did not fail")
	}
}

// A Oneshot that fails is retried; once it exits 0 it is done, is not
// started again, and lets its dependents start.
func TestOneshotRetriedUntilDone(t *testing.T) {
	dir := t.TempDir()
	// The task fails until a marker file exists; its second run creates it
	// and succeeds.
	marker := filepath.Join(dir, "second-run")
	task := helperSpec(dir, "task", "oneshot", marker)
	task.Oneshot = true
	daemon := helperSpec(dir, "daemon", "serve")
	daemon.Ready = fileProbe(readyFile(dir, "daemon"))
	daemon.DependsOn = []string{"task"}
	r := startSupervisor(t, testOptions(), task, daemon)
	waitReady(t, r)

	st := r.service("task")
	if st.State != nodeapi.StateDone || st.Restarts != 1 || st.PID != 0 {
		t.Fatalf("task: %+v, want done after one restart", st)
	}
	d := r.service("daemon")
	if d.StartedAt.Before(st.ReadyAt) {
		t.Errorf("daemon started at %s, before the task was done at %s", d.StartedAt, st.ReadyAt)
	}
	want := []string{"oneshot-fail task", "oneshot-ok task", "start daemon", "ready daemon"}
	if got := readJournal(t, dir); !slices.Equal(got, want) {
		t.Fatalf("journal %q, want %q", got, want)
	}
	r.stop(t)
	if got := r.service("task").State; got != nodeapi.StateStopped {
		t.Errorf("task after stop: %s, want stopped", got)
	}
}

func TestReadMeminfo(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	os.WriteFile(p, []byte("MemTotal:        2014700 kB\nMemFree:          123456 kB\nMemAvailable:    1500000 kB\nBuffers: x kB\n"), 0o644)
	m := readMeminfo(p)
	if m == nil || m.TotalBytes != 2014700<<10 || m.AvailableBytes != 1500000<<10 {
		t.Fatalf("readMeminfo = %+v", m)
	}
	if readMeminfo(filepath.Join(t.TempDir(), "none")) != nil {
		t.Error("a missing meminfo gave memory")
	}
}

// logs NAME serves the tail of a LogFiles file (the API server's audit
// log) from its first whole line.
func TestHandlerServesLogFiles(t *testing.T) {
	dir := t.TempDir()
	audit := filepath.Join(dir, "audit.log")
	line := strings.Repeat("x", 99) + "\n"
	if err := os.WriteFile(audit, []byte(strings.Repeat(line, (MaxLogFileTail/100)+50)), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{LogFiles: map[string]string{"audit": audit, "gone": filepath.Join(dir, "none")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/logs/audit")
	if code != 200 || len(body) > MaxLogFileTail || !strings.HasPrefix(body, line) || !strings.HasSuffix(body, line) {
		t.Errorf("/logs/audit: %d, %d bytes, starts %.20q", code, len(body), body)
	}
	if code, _ := get("/logs/gone"); code != 404 {
		t.Errorf("a missing log file: %d", code)
	}
	if code, _ := get("/logs/nothing"); code != 404 {
		t.Errorf("an unknown name: %d", code)
	}
}

// Annotate adds what the node knows beyond its services to every Status
// (and so to the status the node API serves).
func TestAnnotateStatus(t *testing.T) {
	opts := testOptions()
	held := false
	opts.Annotate = func(st *nodeapi.Status) { st.VIP = &nodeapi.VIPStatus{Address: "10.0.0.5", Held: held} }
	sup, err := New(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := sup.Status().VIP; v == nil || v.Held {
		t.Errorf("VIP %+v, want not held", v)
	}
	held = true
	if v := sup.Status().VIP; v == nil || !v.Held || v.Address != "10.0.0.5" {
		t.Errorf("VIP %+v, want 10.0.0.5 held", v)
	}
}
