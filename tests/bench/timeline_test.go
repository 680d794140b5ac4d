//go:build bench

package bench

import (
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"kiln/qemu"
)

// consoleClock keeps a VM's serial console line by line with the host time
// each line arrived (its newline), so that every line can be placed on the
// timeline "seconds since QEMU start". The guest's own stamps (kernel
// uptime) say how long the guest thought it took; the arrival says what a
// person watching the console saw.
type consoleClock struct {
	mu      sync.Mutex
	lines   []stampedLine
	partial []byte
	changed chan struct{}
}

type stampedLine struct {
	At   time.Time
	Text string
}

func newConsoleClock() *consoleClock { return &consoleClock{changed: make(chan struct{})} }

// follow stamps a VM's console from its first byte until QEMU exits.
// qemu.Console keeps everything it received, so a reader started just
// after qemu.Start misses nothing; the kernel's first line comes long
// after that.
func follow(vm *qemu.VM) *consoleClock {
	c := newConsoleClock()
	go io.Copy(c, vm.Console().NewReader())
	return c
}

func (c *consoleClock) Write(p []byte) (int, error) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := strings.IndexByte(string(p), '\n')
		if i < 0 {
			c.partial = append(c.partial, p...)
			break
		}
		c.partial = append(c.partial, p[:i]...)
		c.lines = append(c.lines, stampedLine{At: now, Text: strings.TrimRight(string(c.partial), "\r")})
		c.partial = c.partial[:0]
		p = p[i+1:]
	}
	close(c.changed)
	c.changed = make(chan struct{})
	return n, nil
}

// Lines returns the complete lines so far.
func (c *consoleClock) Lines() []stampedLine {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]stampedLine(nil), c.lines...)
}

// waitFor waits until a line matches and returns it (ok false after
// timeout).
func (c *consoleClock) waitFor(match func(string) bool, timeout time.Duration) (stampedLine, bool) {
	deadline := time.After(timeout)
	for i := 0; ; {
		c.mu.Lock()
		for ; i < len(c.lines); i++ {
			if match(c.lines[i].Text) {
				l := c.lines[i]
				c.mu.Unlock()
				return l, true
			}
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			return stampedLine{}, false
		}
	}
}

// The console's formats. A stage line is what PID 1 and the early init
// print, "kiln: [  12.34s] mounts done (0.12s)" or "kiln-init: [ 1.23s]
// root mounted ...": a program name, the kernel's uptime, the message.
// Any program printing that shape is a stage: the list of stages is read
// from the console, not fixed here. A kernel line is "[    1.234567] ...".
var (
	stageRE  = regexp.MustCompile(`(?:^|[^\w.-])([A-Za-z][\w.-]*): \[\s*(\d+(?:\.\d+)?)s\] ?(.*)$`)
	kernelRE = regexp.MustCompile(`^\[\s*(\d+\.\d+)\] ?(.*)$`)
)

// stageLine parses a stage line.
func stageLine(s string) (prog string, guest float64, msg string, ok bool) {
	m := stageRE.FindStringSubmatch(s)
	if m == nil {
		return "", 0, "", false
	}
	g, err := strconv.ParseFloat(m[2], 64)
	if err != nil {
		return "", 0, "", false
	}
	return m[1], g, strings.TrimSpace(m[3]), true
}

// kernelLine parses a kernel message.
func kernelLine(s string) (guest float64, msg string, ok bool) {
	m := kernelRE.FindStringSubmatch(s)
	if m == nil {
		return 0, "", false
	}
	g, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, "", false
	}
	return g, m[2], true
}

// kernelMilestones are the kernel messages worth a row of their own: the
// initramfs being unpacked (its size is most of an image) and the kernel
// handing over to /init. Absent ones are left out.
var kernelMilestones = []string{
	"Trying to unpack rootfs image as initramfs",
	"Freeing initrd memory",
	"Freeing unused kernel image",
	"Run /init as init process",
}

// timelineRow is one row of a node's boot timeline.
type timelineRow struct {
	At    time.Duration // since QEMU start (host clock); < 0: unknown
	Guest float64       // the guest's stamp, kernel uptime in seconds; < 0: none
	What  string
	From  string // where the time comes from
}

// bootFigures are the timeline's points the comparison with the floors
// uses (zero when not seen).
type bootFigures struct {
	KernelFirst time.Duration // QEMU start → the kernel's first console line
	PID1First   time.Duration // QEMU start → the first stage line (PID 1 or the early init)
	KernelZero  time.Duration // QEMU start → the kernel's clock at 0 (estimated)
	stages      []stageAt
}

type stageAt struct {
	prog  string
	guest float64
	at    time.Duration
	msg   string
}

// guestStage returns the guest stamp of the first stage whose message
// matches, or -1.
func (f bootFigures) guestStage(match func(string) bool) float64 {
	for _, s := range f.stages {
		if match(s.msg) {
			return s.guest
		}
	}
	return -1
}

// consoleTimeline turns a node's console into timeline rows: the kernel's
// first line, its milestones, and every stage line, at the time each
// arrived on the host, with the guest's own stamp beside it.
func consoleTimeline(start time.Time, lines []stampedLine) ([]timelineRow, bootFigures) {
	var rows []timelineRow
	var f bootFigures
	kernelSeen := false
	milestone := map[string]bool{}
	zero := time.Duration(-1)
	for _, l := range lines {
		at := l.At.Sub(start)
		if g, msg, ok := kernelLine(l.Text); ok {
			if !kernelSeen {
				kernelSeen = true
				f.KernelFirst = at
				rows = append(rows, timelineRow{at, g, "kernel: first console line (" + shorten(msg, 60) + ")", "console"})
				continue
			}
			for _, m := range kernelMilestones {
				if !milestone[m] && strings.Contains(msg, m) {
					milestone[m] = true
					rows = append(rows, timelineRow{at, g, "kernel: " + shorten(msg, 80), "console"})
				}
			}
			continue
		}
		prog, g, msg, ok := stageLine(l.Text)
		if !ok {
			continue
		}
		if f.PID1First == 0 {
			f.PID1First = at
			rows = append(rows, timelineRow{at, g, "PID 1: first line (" + prog + ")", "console"})
		}
		f.stages = append(f.stages, stageAt{prog, g, at, msg})
		rows = append(rows, timelineRow{at, g, prog + ": " + shorten(msg, 90), "console"})
		// The kernel's clock started at most this long after QEMU: the
		// line arrived after it was stamped.
		if z := at - time.Duration(g*float64(time.Second)); zero < 0 || z < zero {
			zero = z
		}
	}
	if zero >= 0 {
		f.KernelZero = zero
		rows = append(rows, timelineRow{zero, 0, "kernel clock at 0 (estimated: the earliest stage line's arrival minus its stamp)", "console"})
	}
	return rows, f
}

// sortRows orders a timeline by time; rows of unknown time go last.
func sortRows(rows []timelineRow) {
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i].At, rows[j].At
		if a < 0 || b < 0 {
			return b < 0 && a >= 0
		}
		return a < b
	})
}

func shorten(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func secs(d time.Duration) string {
	if d <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}
