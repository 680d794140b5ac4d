package supervisor

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"kiln/configs/nodeapi"
)

// panicOnce makes the hook panic the first time it is called at point for
// service, and returns how many times that happened so far.
func panicOnce(t *testing.T, point, service string) *atomic.Int32 {
	t.Helper()
	var n atomic.Int32
	h := func(p, s string) {
		if p == point && s == service && n.Add(1) == 1 {
			panic("injected at " + p)
		}
	}
	testHook.Store(&h)
	t.Cleanup(func() { testHook.Store(nil) })
	return &n
}

// A panic while a service runs is reported with its stack, the process is
// stopped, and the service is restarted with backoff like after an exit;
// the supervisor and the other services carry on.
func TestPanicInRunRestartsService(t *testing.T) {
	dir := t.TempDir()
	panicOnce(t, hookRun, "a")
	var out syncBuffer
	opts := testOptions()
	opts.Output = &out
	specs := chain(dir)
	r := startSupervisor(t, opts, specs...)
	waitReady(t, r)

	text := out.String()
	if !strings.Contains(text, "supervisor | kiln: PANIC in the supervision of a: injected at run\n") ||
		!strings.Contains(text, "supervisor | goroutine ") {
		t.Errorf("panic not reported with its stack:\n%s", text)
	}
	a := r.service("a")
	if a.Restarts != 1 || a.State != nodeapi.StateReady || a.LastExit != "the supervision of a panicked: injected at run" {
		t.Errorf("a after the panic: %+v", a)
	}
	var whats []string
	for _, e := range events(r.Status(), "a") {
		whats = append(whats, e.What)
	}
	if !slices.Contains(whats, "exited: the supervision of a panicked: injected at run") ||
		!slices.ContainsFunc(whats, func(w string) bool { return strings.HasPrefix(w, "restarting in ") }) {
		t.Errorf("a's events %q", whats)
	}
	// The first process was stopped, not left behind.
	m := regexp.MustCompile(`a: started \(pid (\d+)\)`).FindAllStringSubmatch(text, -1)
	if len(m) != 2 {
		t.Fatalf("a started %d times:\n%s", len(m), text)
	}
	first, _ := strconv.Atoi(m[0][1])
	if !processGone(first) {
		t.Errorf("a's first process %d still runs", first)
	}
	r.stop(t)
	for _, s := range r.Status().Services {
		if s.State != nodeapi.StateStopped {
			t.Errorf("%s after stop: %+v", s.Name, s)
		}
	}
}

// A panic in the probe loop is reported and the probing goes on: the
// running process is not restarted for it.
func TestPanicInProbeLoop(t *testing.T) {
	dir := t.TempDir()
	n := panicOnce(t, hookProbe, "b")
	var out syncBuffer
	opts := testOptions()
	opts.Output = &out
	r := startSupervisor(t, opts, chain(dir)...)
	waitReady(t, r)
	if n.Load() < 2 {
		t.Errorf("probe loop ran %d times", n.Load())
	}
	if !strings.Contains(out.String(), "supervisor | kiln: PANIC in the readiness probing of b: injected at probe\n") {
		t.Errorf("panic not reported:\n%s", out.String())
	}
	if b := r.service("b"); b.Restarts != 0 {
		t.Errorf("b restarted: %+v", b)
	}
}

// A panic while handling an output line costs that line only: the pipe is
// still drained and the next lines are kept.
func TestPanicInOutputReader(t *testing.T) {
	dir := t.TempDir()
	panicOnce(t, hookLine, "talker")
	var out syncBuffer
	opts := testOptions()
	opts.Output = &out
	sp := helperSpec(dir, "talker", "lines", "5")
	sp.Ready = fileProbe(readyFile(dir, "talker"))
	r := startSupervisor(t, opts, sp)
	waitReady(t, r)
	eventually(t, 5*time.Second, func() error {
		lines, _ := r.Logs("talker")
		if !slices.Contains(lines, "after long") || !slices.Contains(lines, "hello from talker") {
			return fmt.Errorf("logs %q", lines)
		}
		return nil
	})
	if !strings.Contains(out.String(), "supervisor | kiln: PANIC in the output reader of talker: injected at line\n") {
		t.Errorf("panic not reported:\n%s", out.String())
	}
}

// A probe that always panics is a failing probe; the panic is reported
// with its stack once, then only counted, so it cannot flood the console.
func TestPanickingProbeReportedSparingly(t *testing.T) {
	dir := t.TempDir()
	var out syncBuffer
	opts := testOptions()
	opts.Output = &out
	sp := helperSpec(dir, "p", "serve")
	var calls atomic.Int32
	sp.Ready = func(context.Context) error {
		calls.Add(1)
		var m map[string]int
		m["x"] = 1
		return nil
	}
	r := startSupervisor(t, opts, sp)
	eventually(t, 10*time.Second, func() error {
		if calls.Load() < 9 {
			return fmt.Errorf("%d probes", calls.Load())
		}
		return nil
	})
	text := out.String()
	if c := strings.Count(text, "kiln: PANIC in the readiness probe of p: assignment to entry in nil map\n"); c != 1 {
		t.Errorf("stack reported %d times:\n%s", c, text)
	}
	if !strings.Contains(text, "kiln: PANIC in the readiness probe of p: assignment to entry in nil map (2 times so far; stack as the first time)") ||
		!strings.Contains(text, "(8 times so far;") || strings.Contains(text, "(3 times so far;") {
		t.Errorf("repeats:\n%s", text)
	}
	if p := r.service("p"); p.State != nodeapi.StateStarting || p.Restarts != 0 {
		t.Errorf("p: %+v", p)
	}
}

// EventsSince counts events, not positions in the capped timeline: a
// follower sees every event recorded after the timeline is full.
func TestEventsSincePastTheCap(t *testing.T) {
	s, err := New(testOptions(), []Spec{{Name: "a", Path: "/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	sv := s.byName["a"]
	add := func(from, to int) {
		for i := from; i < to; i++ {
			s.update(sv, func(*nodeapi.ServiceStatus) []event { return []event{{what: fmt.Sprintf("e%d", i)}} })
		}
	}
	whats := func(evs []nodeapi.Event) []string {
		var w []string
		for _, e := range evs {
			w = append(w, e.What)
		}
		return w
	}
	add(0, 10)
	evs, next := s.EventsSince(0)
	if len(evs) != 10 || next != 10 || evs[9].What != "e9" {
		t.Fatalf("first 10: %q, next %d", whats(evs), next)
	}
	add(10, 2500)
	evs, next = s.EventsSince(next)
	// e10..e199 were kept as the first events; e200..e699 dropped.
	if next != 2500 || len(evs) != maxEvents-10 || evs[0].What != "e10" || evs[keepFirstEvents-10].What != "e700" || evs[len(evs)-1].What != "e2499" {
		t.Fatalf("after 2500: %d events from %s, next %d", len(evs), evs[0].What, next)
	}
	for round := 0; round < 3; round++ {
		from := 2500 + round*3
		add(from, from+3)
		evs, next = s.EventsSince(next)
		if want := []string{fmt.Sprintf("e%d", from), fmt.Sprintf("e%d", from+1), fmt.Sprintf("e%d", from+2)}; !slices.Equal(whats(evs), want) || next != uint64(from+3) {
			t.Errorf("round %d: %q, next %d; want %q", round, whats(evs), next, want)
		}
	}
	if evs, n := s.EventsSince(next); len(evs) != 0 || n != next {
		t.Errorf("nothing new: %q, %d", whats(evs), n)
	}
	// A follower that fell behind into the dropped range resumes after it.
	evs, _ = s.EventsSince(300)
	if evs[0].What != "e709" {
		t.Errorf("from 300: first %s", evs[0].What)
	}
	if len(s.Status().Timeline) != maxEvents {
		t.Errorf("timeline holds %d events", len(s.Status().Timeline))
	}
}
