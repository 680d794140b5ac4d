// Package panics keeps a panic in one of PID 1's goroutines from ending
// PID 1. A panic that leaves a goroutine ends the whole process, and PID 1
// ending panics the kernel (kiln's kernels run with panic=-1: the node
// reboots). So every goroutine PID 1 starts (the boot's steps, the
// supervisor's runners, readers and probes, the status servers) runs its
// work under Guard, which reports the panic with its stack and turns it
// into an error the goroutine's owner acts on: restart, retry, or report.
package panics

import (
	"fmt"
	"os"
	"runtime/debug"
)

// Error is a recovered panic: "<what> panicked: <value>".
type Error struct {
	What  string // the goroutine's work, e.g. "the output reader of etcd"
	Value any    // what was passed to panic
}

func (e *Error) Error() string { return fmt.Sprintf("%s panicked: %v", e.What, e.Value) }

// Guard runs f and turns a panic in it into an *Error, after reporting
// "kiln: PANIC in <what>: <value>" and the goroutine's stack through
// report (standard error when report is nil). A report that panics
// itself (a broken console) falls back to standard error: the panic is
// never dropped silently, and never escapes.
func Guard(report func(msg string), what string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			say(report, fmt.Sprintf("kiln: PANIC in %s: %v\n%s\n", what, r, debug.Stack()))
			err = &Error{What: what, Value: r}
		}
	}()
	return f()
}

// Do is Guard for work that returns nothing; the error is the panic's, or
// nil.
func Do(report func(msg string), what string, f func()) error {
	return Guard(report, what, func() error { f(); return nil })
}

func say(report func(string), msg string) {
	if report != nil {
		defer func() {
			if recover() != nil {
				_, _ = os.Stderr.WriteString(msg)
			}
		}()
		report(msg)
		return
	}
	_, _ = os.Stderr.WriteString(msg)
}
