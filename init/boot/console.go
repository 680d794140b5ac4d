package boot

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// console prints PID 1's lines: stage lines "kiln: [  4.21s] mounts done"
// for a person (or a test reading the serial console) to follow, and the
// same text without the time to /dev/kmsg, so that dmesg has the boot
// timeline among the kernel's messages. It is safe for concurrent use.
type console struct {
	mu      sync.Mutex
	out     io.Writer // the console; never nil
	kmsg    io.Writer // /dev/kmsg, or nil
	started time.Time
}

func newConsole(out io.Writer, started time.Time) *console {
	if out == nil {
		out = io.Discard
	}
	return &console{out: out, started: started}
}

// Write writes p to the console as it is (Node.Console: the components'
// output goes there, not to the kernel's ring buffer).
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

// stage prints one timestamped line.
func (c *console) stage(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.line(fmt.Sprintf("kiln: [%7.2fs] %s\n", time.Since(c.started).Seconds(), msg), "kiln: "+msg)
}

// warn prints a timestamped warning.
func (c *console) warn(format string, args ...any) {
	c.stage("warning: "+format, args...)
}

// fatal prints the line a console watcher looks for when the node cannot
// go on: "kiln: FATAL: <what>". A multi-line error is joined into one line.
func (c *console) fatal(err error) {
	msg := "kiln: FATAL: " + oneLine(err.Error())
	c.line(msg+"\n", msg)
}

// raw prints text as it is (a panic's stack).
func (c *console) raw(s string) { c.line(s, "") }

func (c *console) line(console, kmsg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	io.WriteString(c.out, console)
	if c.kmsg != nil && kmsg != "" {
		// <7>: debug level, below the console's default log level, so
		// the kernel does not print the line a second time.
		io.WriteString(c.kmsg, "<7>"+kmsg+"\n")
	}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ; ")), " ")
}

// attach makes /dev/console PID 1's standard input, output and error (so a
// Go runtime crash report and every child that inherits them reach the
// console) and the console's output, and opens /dev/kmsg. It runs once
// devtmpfs is mounted.
func (c *console) attach() error {
	f, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/console: %w", err)
	}
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
			return fmt.Errorf("dup /dev/console to fd %d: %w", fd, err)
		}
	}
	// Writes through fd 2 (an *os.File the runtime already has) now go to
	// the console.
	c.mu.Lock()
	c.out = os.Stderr
	c.mu.Unlock()
	f.Close()
	// Without this the kernel rate-limits /dev/kmsg writers to a burst of
	// ten lines.
	_ = os.WriteFile("/proc/sys/kernel/printk_devkmsg", []byte("on\n"), 0)
	if k, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		c.mu.Lock()
		c.kmsg = k
		c.mu.Unlock()
	}
	return nil
}

// ensureStdFds fills file descriptors 0-2 when the kernel could not open
// /dev/console for init (an initramfs without it): otherwise the first
// files PID 1 opens would land on them, and attach's dup3 would close them
// behind their owners' backs.
func ensureStdFds() {
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			continue
		}
		// open returns the lowest free descriptor: this one.
		if _, err := unix.Open("/", unix.O_RDONLY, 0); err != nil {
			return
		}
	}
}

// kernelStart returns when the kernel started: now minus the time since
// boot (CLOCK_BOOTTIME, what /proc/uptime shows), readable before /proc is
// mounted.
func kernelStart() time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Now()
	}
	return time.Now().Add(-time.Duration(ts.Nano()))
}
