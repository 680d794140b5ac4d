// Package console writes PID 1's lines to the machine's console: the
// stage lines "kiln: [  4.21s] mounts done" a person (or a test reading the
// serial console) follows, warnings, and the "kiln: FATAL: ..." line a
// console watcher looks for. The boot (init/boot) and the role's bring-up
// (init/up) both write through it, so the format exists once.
package console

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Console prints timestamped lines to a writer and, once attached, the
// same text without the time to /dev/kmsg, so that dmesg has the boot
// timeline among the kernel's messages. It is safe for concurrent use.
type Console struct {
	mu      sync.Mutex
	out     io.Writer // the console; never nil
	kmsg    io.Writer // /dev/kmsg, or nil
	started time.Time
	stages  []Stage // the first maxStages stage lines, for the node's status
}

// Stage is one stage line as recorded: its time since the console's start
// (the kernel's) and its text.
type Stage struct {
	At   time.Duration
	What string
}

// maxStages bounds the record: the boot and the bring-up print a few
// dozen; a node that keeps printing warnings must not grow it.
const maxStages = 200

// Stages returns the stage lines recorded so far, oldest first.
func (c *Console) Stages() []Stage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Stage(nil), c.stages...)
}

// Record adds stages printed by an earlier program (stage 1, before this
// process existed) to the record, before the ones of its own.
func (c *Console) Record(earlier []Stage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stages = append(append([]Stage(nil), earlier...), c.stages...)
	if len(c.stages) > maxStages {
		c.stages = c.stages[:maxStages]
	}
}

// New returns a console writing to out whose stage lines count from
// started (now when zero).
func New(out io.Writer, started time.Time) *Console {
	if out == nil {
		out = io.Discard
	}
	if started.IsZero() {
		started = time.Now()
	}
	return &Console{out: out, started: started}
}

// Started is the origin of the stage lines' times.
func (c *Console) Started() time.Time { return c.started }

// Write writes p to the console as it is (components' output goes there,
// not to the kernel's ring buffer).
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

// Stage prints one timestamped line.
func (c *Console) Stage(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	at := time.Since(c.started)
	c.mu.Lock()
	if len(c.stages) < maxStages {
		c.stages = append(c.stages, Stage{At: at, What: msg})
	}
	c.mu.Unlock()
	c.line(fmt.Sprintf("kiln: [%7.2fs] %s\n", at.Seconds(), msg), "kiln: "+msg)
}

// StagesEnv is the environment variable stage 1 hands its recorded stages
// to kiln-node in (EncodeStages), across the exec.
const StagesEnv = "KILN_STAGE1_STAGES"

// EncodeStages renders stages for StagesEnv: "<ns>\t<text>" lines.
func EncodeStages(st []Stage) string {
	var b strings.Builder
	for _, s := range st {
		fmt.Fprintf(&b, "%d\t%s\n", s.At.Nanoseconds(), strings.ReplaceAll(s.What, "\n", " "))
	}
	return b.String()
}

// DecodeStages parses EncodeStages' output; malformed lines are skipped.
func DecodeStages(v string) []Stage {
	var out []Stage
	for _, l := range strings.Split(v, "\n") {
		ns, what, ok := strings.Cut(l, "\t")
		var n int64
		if _, err := fmt.Sscan(ns, &n); !ok || err != nil {
			continue
		}
		out = append(out, Stage{At: time.Duration(n), What: what})
	}
	return out
}

// Warn prints a timestamped warning.
func (c *Console) Warn(format string, args ...any) {
	c.Stage("warning: "+format, args...)
}

// Fatal prints the line a console watcher looks for when the node cannot
// go on: "kiln: FATAL: <what>". A multi-line error is joined into one line.
func (c *Console) Fatal(err error) {
	msg := "kiln: FATAL: " + OneLine(err.Error())
	c.line(msg+"\n", msg)
}

// Raw prints text as it is (a panic's stack), to the console only.
func (c *Console) Raw(s string) { c.line(s, "") }

func (c *Console) line(console, kmsg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	io.WriteString(c.out, console)
	if c.kmsg != nil && kmsg != "" {
		// <7>: debug level, below the console's default log level, so
		// the kernel does not print the line a second time.
		io.WriteString(c.kmsg, "<7>"+kmsg+"\n")
	}
}

// OneLine joins a multi-line text (a tool's output, a joined error) into
// one line, " ; " between the lines.
func OneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ; ")), " ")
}

// Attach makes /dev/console PID 1's standard input, output and error (so a
// Go runtime crash report and every child that inherits them reach the
// console) and the console's output, and opens /dev/kmsg. PID 1 calls it
// once devtmpfs is mounted.
func (c *Console) Attach() error {
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

// EnsureStdFds fills file descriptors 0-2 when the kernel could not open
// /dev/console for init (an initramfs without it): otherwise the first
// files init (stage 1, PID 1) opens would land on them, and the console's
// Attach (dup3) would close them behind their owners' backs.
func EnsureStdFds() {
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

// KernelStart returns when the kernel started: now minus the time since
// boot (CLOCK_BOOTTIME, what /proc/uptime shows), readable before /proc is
// mounted.
func KernelStart() time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Now()
	}
	return time.Now().Add(-time.Duration(ts.Nano()))
}
