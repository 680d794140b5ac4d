package up

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// console prints the stage lines a person (or a test reading the serial
// console) follows: "kiln: [  4.21s] etcd ready".
type console struct {
	mu      sync.Mutex
	w       io.Writer
	started time.Time
}

func newConsole(w io.Writer, started time.Time) *console {
	if w == nil {
		w = io.Discard
	}
	if started.IsZero() {
		started = time.Now()
	}
	return &console{w: w, started: started}
}

func (c *console) stage(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.w, "kiln: [%7.2fs] %s\n", time.Since(c.started).Seconds(), fmt.Sprintf(format, args...))
}
