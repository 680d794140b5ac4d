package boot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln/images/initramfs"

	"kiln/internal/testutil"
)

type syncBuf = testutil.SyncBuffer

func TestConsoleFormat(t *testing.T) {
	var out syncBuf
	c := newConsole(&out, time.Now().Add(-4210*time.Millisecond))
	c.stage("mounts done")
	c.fatal(errors.New("config kiln.config=/etc/bad.yaml: line 3: unknown field \"rloe\"\nrole: bad"))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if !regexp.MustCompile(`^kiln: \[   4\.2\ds\] mounts done$`).MatchString(lines[0]) {
		t.Errorf("stage line %q", lines[0])
	}
	if lines[1] != `kiln: FATAL: config kiln.config=/etc/bad.yaml: line 3: unknown field "rloe" ; role: bad` {
		t.Errorf("fatal line %q", lines[1])
	}
}

func TestPhases(t *testing.T) {
	var out syncBuf
	m := newMachine(newConsole(&out, time.Now()), nil)
	var mu sync.Mutex
	var ran []string
	note := func(s string) func(context.Context) error {
		return func(context.Context) error { mu.Lock(); ran = append(ran, s); mu.Unlock(); return nil }
	}
	if err := m.runPhase(phase{"devices", []task{{"a", note("a")}, {"b", note("b")}}}); err != nil {
		t.Fatal(err)
	}
	if len(ran) != 2 || !strings.Contains(out.String(), "devices: a done in") || !strings.Contains(out.String(), "] devices done (") {
		t.Errorf("ran %v\n%s", ran, out.String())
	}
	// A panicking task fails its phase instead of PID 1.
	err := m.runPhase(phase{"bad", []task{{"boom", func(context.Context) error { panic("oops") }}, {"ok", note("ok")}}})
	if err == nil || !strings.Contains(err.Error(), "boom panicked: oops") {
		t.Errorf("panic: %v", err)
	}
	if strings.Contains(out.String(), "bad done") || !strings.Contains(out.String(), "kiln: PANIC in boom: oops") {
		t.Errorf("console:\n%s", out.String())
	}
	err = m.runPhase(phase{"config", []task{{"config", func(context.Context) error { return errors.New("config x: bad") }}}})
	if err == nil || err.Error() != "config x: bad" {
		t.Errorf("error %v, want it unwrapped (the FATAL line names the source, not the phase)", err)
	}
}

func TestRecoverTo(t *testing.T) {
	var out syncBuf
	con := newConsole(&out, time.Now())
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer recoverTo(con, "dhcp")
		panic("bad lease")
	}()
	<-done
	if !strings.Contains(out.String(), "kiln: PANIC in dhcp (recovered; the node stays up): bad lease") {
		t.Errorf("console:\n%s", out.String())
	}
}

func TestCheckInitramfsComplete(t *testing.T) {
	root := t.TempDir()
	err := checkInitramfsComplete(root)
	if err == nil || !strings.Contains(err.Error(), "too little memory") || !strings.Contains(err.Error(), initramfs.CompleteMarker) {
		t.Fatalf("a root without the marker: %v", err)
	}
	os.WriteFile(filepath.Join(root, initramfs.CompleteMarker), nil, 0o444)
	if err := checkInitramfsComplete(root); err != nil {
		t.Fatal(err)
	}
}
