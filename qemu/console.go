package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Errors recognized on the serial console. Expect and Wait return them
// (wrapped, with the console line): test them with errors.Is.
var (
	// ErrInitramfsUnpack: the kernel could not unpack the whole initramfs,
	// typically because the guest has too little RAM for it ("Initramfs
	// unpacking failed: write error"). The boot goes on with a truncated
	// root filesystem, so it must be caught here.
	ErrInitramfsUnpack = errors.New("initramfs unpacking failed (too little guest memory for the initramfs?)")
	// ErrKernelPanic: "Kernel panic - not syncing".
	ErrKernelPanic = errors.New("guest kernel panic")
	// ErrInitrdTooLarge: QEMU refused to load the initramfs because it
	// does not fit in the guest's RAM at all ("initrd is too large").
	ErrInitrdTooLarge = errors.New("initramfs larger than guest memory")
	// ErrExited: the VM exited before the expected output appeared.
	ErrExited = errors.New("VM exited")
	// ErrTimeout: the expected output did not appear in time.
	ErrTimeout = errors.New("timed out waiting for console output")
)

// failures maps console substrings to the error they mean.
var failures = []struct {
	substr string
	err    error
}{
	{"Initramfs unpacking failed", ErrInitramfsUnpack},
	{"Kernel panic - not syncing", ErrKernelPanic},
}

func lineFailure(line string) error {
	for _, f := range failures {
		if strings.Contains(line, f.substr) {
			return fmt.Errorf("%w: %q", f.err, strings.TrimSpace(line))
		}
	}
	return nil
}

// Console is a VM's serial console: everything the guest printed is kept in
// memory (and copied to the serial log), and Expect waits for a line.
type Console struct {
	mu      sync.Mutex
	raw     []byte
	lines   []string // complete lines, without "\r\n"
	partial []byte   // the current unfinished line
	cursor  int      // next line index Expect looks at
	failure error    // first failure line seen
	changed chan struct{}
	closed  bool
	exitErr error // set when closed

	in  io.Writer
	out []io.Writer // serial log file, ConsoleOutput
}

func newConsole(in io.Writer, out ...io.Writer) *Console {
	c := &Console{changed: make(chan struct{}), in: in}
	for _, w := range out {
		if w != nil {
			c.out = append(c.out, w)
		}
	}
	return c
}

// consume takes QEMU's stdout: the guest's serial output.
func (c *Console) consume(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.raw = append(c.raw, p...)
	for _, w := range c.out {
		w.Write(p) // best effort: a full disk must not stop the VM
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.partial = append(c.partial, p...)
			break
		}
		c.partial = append(c.partial, p[:i]...)
		line := strings.TrimRight(string(c.partial), "\r")
		c.partial = c.partial[:0]
		c.lines = append(c.lines, line)
		if c.failure == nil {
			c.failure = lineFailure(line)
		}
		p = p[i+1:]
	}
	c.broadcast()
}

func (c *Console) broadcast() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// close marks the end of the output (QEMU exited).
func (c *Console) close(exitErr error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) > 0 {
		line := strings.TrimRight(string(c.partial), "\r")
		c.partial = nil
		c.lines = append(c.lines, line)
		if c.failure == nil {
			c.failure = lineFailure(line)
		}
	}
	c.closed = true
	c.exitErr = exitErr
	c.broadcast()
}

// consoleWriter adapts Console to io.Writer for exec.Cmd.Stdout.
type consoleWriter struct{ c *Console }

func (w consoleWriter) Write(p []byte) (int, error) {
	w.c.consume(p)
	return len(p), nil
}

// Write sends input to the guest's serial console.
func (c *Console) Write(p []byte) (int, error) {
	if c.in == nil {
		return 0, errors.New("qemu: console has no input")
	}
	return c.in.Write(p)
}

// Output returns everything the guest printed so far.
func (c *Console) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.raw)
}

// Lines returns the complete lines printed so far.
func (c *Console) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// Tail returns the last n lines (the unfinished one included), for error
// messages.
func (c *Console) Tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tailLocked(n)
}

func (c *Console) tailLocked(n int) string {
	l := c.lines
	if len(l) > n {
		l = l[len(l)-n:]
	}
	s := strings.Join(l, "\n")
	if len(c.partial) > 0 {
		s += "\n" + string(c.partial)
	}
	return s
}

// Failure returns the first failure recognized on the console
// (ErrInitramfsUnpack, ErrKernelPanic), or nil.
func (c *Console) Failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failure
}

// Expect waits until a console line containing substr appears and returns
// that line. It only looks at lines after the one the previous Expect
// matched, so successive calls follow the boot in order. It fails early with
// ErrInitramfsUnpack or ErrKernelPanic when such a line comes first, with
// ErrExited when the VM exits, and with ErrTimeout after timeout (0: wait as
// long as ctx allows).
func (c *Console) Expect(ctx context.Context, substr string, timeout time.Duration) (string, error) {
	return c.expect(ctx, timeout, fmt.Sprintf("%q", substr), func(s string) bool { return strings.Contains(s, substr) })
}

// ExpectRegexp is Expect with a regular expression.
func (c *Console) ExpectRegexp(ctx context.Context, re *regexp.Regexp, timeout time.Duration) (string, error) {
	return c.expect(ctx, timeout, "/"+re.String()+"/", re.MatchString)
}

func (c *Console) expect(ctx context.Context, timeout time.Duration, what string, match func(string) bool) (string, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for ; c.cursor < len(c.lines); c.cursor++ {
			l := c.lines[c.cursor]
			if err := lineFailure(l); err != nil {
				c.cursor++
				return "", fmt.Errorf("waiting for %s: %w\nconsole tail:\n%s", what, err, c.tailLocked(20))
			}
			if match(l) {
				c.cursor++
				return l, nil
			}
		}
		// A prompt may not end with a newline: look at the unfinished
		// line too, without consuming it.
		if len(c.partial) > 0 && match(string(c.partial)) {
			return string(c.partial), nil
		}
		if c.closed {
			err := ErrExited
			if c.exitErr != nil {
				err = fmt.Errorf("%w: %w", ErrExited, c.exitErr)
			}
			return "", fmt.Errorf("waiting for %s: %w\nconsole tail:\n%s", what, err, c.tailLocked(20))
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
			c.mu.Lock()
		case <-ctx.Done():
			c.mu.Lock()
			err := ctx.Err()
			if errors.Is(err, context.DeadlineExceeded) {
				err = ErrTimeout
			}
			return "", fmt.Errorf("waiting for %s: %w\nconsole tail:\n%s", what, err, c.tailLocked(20))
		}
	}
}

// NewReader returns a reader of the console output from its beginning that
// follows new output as it comes, and returns io.EOF once the VM has exited
// and everything has been read.
func (c *Console) NewReader() io.Reader { return &consoleReader{c: c} }

type consoleReader struct {
	c   *Console
	off int
}

func (r *consoleReader) Read(p []byte) (int, error) {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if r.off < len(c.raw) {
			n := copy(p, c.raw[r.off:])
			r.off += n
			return n, nil
		}
		if c.closed {
			return 0, io.EOF
		}
		ch := c.changed
		c.mu.Unlock()
		<-ch
		c.mu.Lock()
	}
}
