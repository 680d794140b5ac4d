package supervisor

import (
	"kiln/configs/nodeapi"

	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln/internal/testutil"
)

// The fake children are this test binary, re-run with KILN_HELPER=1 so that
// only TestHelperProcess runs, which acts out one mode and exits:
//
//	serve            journal "start NAME", print a line, after KILN_READY_AFTER
//	                 journal "ready NAME" and create KILN_READY, then on
//	                 SIGTERM journal "stop NAME" and exit 0
//	exit CODE        print a line to stderr and exit with CODE
//	sleep-exit DUR   run for DUR, then exit 1
//	ignore-term      ignore SIGTERM, create KILN_READY, run until killed
//	lines N          print N numbered lines, one 100 KiB line and "after long", then serve
//	oneshot MARKER   exit 1 the first time (creating MARKER), 0 after
//	orphan [setsid]  start a grandchild (ignore-term, in a session of its own
//	                 if asked), journal "orphan PID" once it runs, exit 1
//
// The journal (KILN_JOURNAL) is one file all helpers append to; O_APPEND
// makes each short write atomic, so its order is the order things happened.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("KILN_HELPER") != "1" {
		return
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Exit(helperMain(args))
}

func helperMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "helper: no mode")
		return 2
	}
	name := os.Getenv("KILN_NAME")
	switch args[0] {
	case "serve":
		return helperServe(name)
	case "oneshot":
		// Fail the first time (creating the marker), succeed after.
		if _, err := os.Stat(args[1]); err != nil {
			os.WriteFile(args[1], nil, 0o644)
			journal("oneshot-fail " + name)
			return 1
		}
		journal("oneshot-ok " + name)
		return 0
	case "exit":
		code, _ := strconv.Atoi(args[1])
		fmt.Fprintf(os.Stderr, "%s: exiting with %d\n", name, code)
		return code
	case "sleep-exit":
		d, _ := time.ParseDuration(args[1])
		time.Sleep(d)
		return 1
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		markReady(name)
		for {
			time.Sleep(time.Hour)
		}
	case "orphan":
		return helperOrphan(name, len(args) > 1 && args[1] == "setsid")
	case "lines":
		n, _ := strconv.Atoi(args[1])
		for i := range n {
			fmt.Printf("line %04d of %s\n", i, name)
		}
		fmt.Fprintln(os.Stderr, strings.Repeat("x", 100<<10))
		fmt.Fprintln(os.Stderr, "after long")
		return helperServe(name)
	}
	fmt.Fprintln(os.Stderr, "helper: unknown mode", args[0])
	return 2
}

func helperServe(name string) int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	journal("start " + name)
	fmt.Printf("hello from %s\n", name)
	if d, err := time.ParseDuration(os.Getenv("KILN_READY_AFTER")); err == nil {
		time.Sleep(d)
	}
	markReady(name)
	<-term
	journal("stop " + name)
	return 0
}

func helperOrphan(name string, setsid bool) int {
	ready := os.Getenv("KILN_READY") + ".orphan"
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "--", "ignore-term")
	cmd.Env = append(os.Environ(), "KILN_NAME="+name+"-orphan", "KILN_READY="+ready)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr // holds the supervisor's pipes open
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: setsid}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	journal(fmt.Sprintf("orphan %d", cmd.Process.Pid))
	return 1
}

func markReady(name string) {
	journal("ready " + name)
	if p := os.Getenv("KILN_READY"); p != "" {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
}

func journal(line string) {
	p := os.Getenv("KILN_JOURNAL")
	if p == "" {
		return
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// testOptions are tiny durations so the whole package tests in seconds.
func testOptions() Options {
	return Options{
		BackoffBase:   20 * time.Millisecond,
		BackoffMax:    160 * time.Millisecond,
		StableAfter:   500 * time.Millisecond,
		ProbeInterval: 10 * time.Millisecond,
		StopTimeout:   300 * time.Millisecond,
	}
}

// helperSpec is a service played by the test binary in the given mode. Its
// readiness file, if the mode creates one, is dir/NAME.ready.
func helperSpec(dir, name string, mode ...string) Spec {
	return Spec{
		Name: name,
		Path: os.Args[0],
		Args: append([]string{"-test.run=^TestHelperProcess$", "--"}, mode...),
		Env: []string{
			// Race-enabled binaries otherwise sleep a second before exiting.
			"GORACE=atexit_sleep_ms=0",
			"KILN_HELPER=1",
			"KILN_NAME=" + name,
			"KILN_JOURNAL=" + filepath.Join(dir, "journal"),
			"KILN_READY=" + readyFile(dir, name),
		},
	}
}

func readyFile(dir, name string) string { return filepath.Join(dir, name+".ready") }

// fileProbe is ready once the file exists.
func fileProbe(path string) func(context.Context) error {
	return func(context.Context) error {
		_, err := os.Stat(path)
		return err
	}
}

func readJournal(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "journal"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	text := strings.TrimSpace(string(b))
	if text == "" {
		return nil
	}
	return strings.Split(text, "\n")
}

// running is a supervisor whose Run is going on in the background.
type running struct {
	*Supervisor
	cancel context.CancelFunc
	done   chan error
}

// startSupervisor runs a supervisor until the test ends (or stop is called),
// failing the test if Run does not return in time.
func startSupervisor(t *testing.T, opts Options, specs ...Spec) *running {
	t.Helper()
	sup, err := New(opts, specs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Supervisor: sup, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- sup.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels Run and waits for it; calling it twice is fine.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10s after cancel")
	}
}

func (r *running) service(name string) nodeapi.ServiceStatus {
	for _, s := range r.Status().Services {
		if s.Name == name {
			return s
		}
	}
	return nodeapi.ServiceStatus{}
}

// eventually polls cond until it returns nil, failing the test with the
// last error after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// events returns the timeline entries of one service (all if name is "").
func events(st nodeapi.Status, name string) []nodeapi.Event {
	var out []nodeapi.Event
	for _, e := range st.Timeline {
		if name == "" || e.Service == name {
			out = append(out, e)
		}
	}
	return out
}

// syncBuffer is an io.Writer for Options.Output that tests can read while
// the supervisor writes.
type syncBuffer = testutil.SyncBuffer

// processGone reports whether pid no longer runs. A zombie counts as gone:
// an orphaned grandchild is reaped by whatever init the test runs under, if
// at all; the supervisor's own children it always reaps itself.
func processGone(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}
