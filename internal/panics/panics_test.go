package panics

import (
	"errors"
	"strings"
	"testing"
)

func TestGuard(t *testing.T) {
	var got []string
	report := func(s string) { got = append(got, s) }
	if err := Guard(report, "x", func() error { return errors.New("plain") }); err == nil || err.Error() != "plain" || len(got) != 0 {
		t.Errorf("an error passes through: %v (reported %q)", err, got)
	}
	err := Guard(report, "the reader", func() error { panic("bad") })
	var pe *Error
	if !errors.As(err, &pe) || err.Error() != "the reader panicked: bad" || pe.Value != "bad" {
		t.Errorf("panic: %v", err)
	}
	if len(got) != 1 || !strings.HasPrefix(got[0], "kiln: PANIC in the reader: bad\ngoroutine ") || !strings.Contains(got[0], "panics_test.go") {
		t.Errorf("reported %q", got)
	}
	if err := Do(nil, "nil map", func() { var m map[string]int; m["a"] = 1 }); err == nil || !strings.Contains(err.Error(), "nil map panicked: assignment to entry in nil map") {
		t.Errorf("Do: %v", err)
	}
}

// A reporter that panics itself does not let the panic out.
func TestGuardReporterPanics(t *testing.T) {
	err := Do(func(string) { panic("console broken") }, "x", func() { panic("first") })
	if err == nil || err.Error() != "x panicked: first" {
		t.Errorf("%v", err)
	}
}
