package up

import (
	"io"
	"time"

	bootconsole "kiln/init/boot/console"
)

// console prints the stage lines a person (or a test reading the serial
// console) follows: "kiln: [  4.21s] etcd ready". The format is the boot's
// (init/boot/console), so that PID 1's lines and the bring-up's read as
// one timeline.
type console struct{ c *bootconsole.Console }

// newConsole writes to w with times counted from started (now when zero).
// Under PID 1, w is the boot's console itself: the lines come out whole
// between the boot's.
func newConsole(w io.Writer, started time.Time) *console {
	return &console{c: bootconsole.New(w, started)}
}

func (c *console) stage(format string, args ...any) { c.c.Stage(format, args...) }

// panic reports a panic caught in one of the bring-up's goroutines
// (internal/panics) as it is, stack and all.
func (c *console) panic(msg string) { c.c.Raw(msg) }
