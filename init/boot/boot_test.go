package boot

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"kiln/init/boot/console"
	"kiln/internal/testutil"
)

type syncBuf = testutil.SyncBuffer

func TestRunStep(t *testing.T) {
	var out syncBuf
	m := newMachine(console.New(&out, time.Now()), nil)
	ran := false
	if err := m.runStep(step{name: "devices", run: func(context.Context) error { ran = true; return nil }}); err != nil {
		t.Fatal(err)
	}
	if !ran || !strings.Contains(out.String(), "] devices done (") {
		t.Errorf("ran %v\n%s", ran, out.String())
	}
	// A panicking step fails the boot instead of PID 1.
	err := m.runStep(step{name: "boom", run: func(context.Context) error { panic("oops") }})
	if err == nil || err.Error() != "boom panicked: oops" {
		t.Errorf("panic: %v", err)
	}
	if strings.Contains(out.String(), "boom done") || !strings.Contains(out.String(), "kiln: PANIC in boom: oops\ngoroutine ") {
		t.Errorf("console:\n%s", out.String())
	}
	err = m.runStep(step{name: "config", run: func(context.Context) error { return errors.New("config x: bad") }})
	if err == nil || err.Error() != "config x: bad" {
		t.Errorf("error %v, want it unwrapped (the FATAL line names the source, not the step)", err)
	}
}

func TestBackgroundStep(t *testing.T) {
	var out syncBuf
	m := newMachine(console.New(&out, time.Now()), nil)
	running := make(chan struct{})
	if err := m.runStep(step{name: "reaper", loop: func(ctx context.Context) { close(running); <-ctx.Done() }}); err != nil {
		t.Fatal(err)
	}
	<-running
	if !strings.Contains(out.String(), "] reaper started\n") {
		t.Errorf("console:\n%s", out.String())
	}
	// A panic stops the step, not PID 1, says so, and the step is
	// started again after a pause.
	defer func(d time.Duration) { loopRestartBase = d }(loopRestartBase)
	loopRestartBase = 10 * time.Millisecond
	again := make(chan struct{})
	runs := 0
	m.runStep(step{name: "dhcp", loop: func(ctx context.Context) {
		if runs++; runs == 1 {
			panic("bad lease")
		}
		close(again)
		<-ctx.Done()
	}})
	<-again
	waitFor(t, &out, "warning: dhcp stopped: dhcp panicked: bad lease; the node stays up, starting dhcp again in 10ms")
	waitFor(t, &out, "] dhcp started again\n")
	if !strings.Contains(out.String(), "kiln: PANIC in dhcp: bad lease") {
		t.Errorf("console:\n%s", out.String())
	}
	// A step with nothing to do says why, and does not start.
	m.runStep(step{name: "dhcp", loop: func(context.Context) { t.Error("skipped step started") }, skip: m.noLease})
	if !strings.Contains(out.String(), "] dhcp not started: no DHCP lease to keep") {
		t.Errorf("console:\n%s", out.String())
	}
	m.cancel()
}

func waitFor(t *testing.T, out *syncBuf, s string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), s); {
		if time.Now().After(deadline) {
			t.Fatalf("console lacks %q:\n%s", s, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The sequence's order is the boot's: what a step needs comes before it.
func TestSequence(t *testing.T) {
	m := newMachine(console.New(nil, time.Now()), nil)
	var names []string
	for _, s := range m.sequence() {
		if (s.run == nil) == (s.loop == nil) {
			t.Errorf("step %s: want exactly one of run and loop", s.name)
		}
		names = append(names, s.name)
	}
	want := "mounts reaper modules power button config network dhcp hostname storage"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("sequence %q, want %q", got, want)
	}
}

func TestGuard(t *testing.T) {
	var out syncBuf
	con := console.New(&out, time.Now())
	if err := guard(con, "x", func() error { return errors.New("plain") }); err == nil || err.Error() != "plain" {
		t.Errorf("an error passes through: %v", err)
	}
	err := guard(con, "the role's bring-up", func() error { panic("bad") })
	if err == nil || err.Error() != "the role's bring-up panicked: bad" {
		t.Errorf("panic: %v", err)
	}
	if !strings.HasPrefix(out.String(), "kiln: PANIC in the role's bring-up: bad\ngoroutine ") {
		t.Errorf("console:\n%s", out.String())
	}
}

func TestPID1MemoryLimit(t *testing.T) {
	for total, want := range map[uint64]int64{
		0:         64 << 20,
		512 << 20: 64 << 20,
		2 << 30:   128 << 20,
		3 << 30:   192 << 20,
		64 << 30:  256 << 20,
	} {
		if got := pid1MemoryLimit(total); got != want {
			t.Errorf("%d MiB: %d MiB, want %d MiB", total>>20, got>>20, want>>20)
		}
	}
}
