package supervisor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

const (
	// maxLineBytes caps one line: a longer one is cut into pieces of this
	// size, each treated as a line, so a child printing megabytes without
	// a newline costs bounded memory.
	maxLineBytes = 64 << 10
	// ringLines is how many recent lines of each service Logs keeps.
	ringLines = 500
	// maxRingLineBytes caps a line's copy in the ring (the log file keeps
	// all of it): 500 huge lines per service would otherwise pin a lot of
	// PID 1's memory.
	maxRingLineBytes = 8 << 10
	// supervisorPrefix is the name on the supervisor's own Output lines.
	supervisorPrefix = "supervisor"
)

// splitLines reads r to the end and hands each line, without its line end,
// to emit. The slice is only valid during the call.
func splitLines(r io.Reader, emit func([]byte)) {
	br := bufio.NewReaderSize(r, maxLineBytes)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			line = line[:len(line)-1]
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
			emit(line)
		case errors.Is(err, bufio.ErrBufferFull):
			emit(line)
		default: // EOF, or the read deadline set by cleanup
			if len(line) > 0 {
				emit(line)
			}
			return
		}
	}
}

// sink is where one service's lines go: its log file, its ring and Output.
// The lock keeps lines from stdout and stderr whole and in one order in the
// file and the ring.
type sink struct {
	name string
	out  *prefixWriter

	mu      sync.Mutex
	file    *rotatingFile
	ring    [ringLines]string
	next    int // where the next line goes in ring
	n       int // lines in ring
	fileErr bool
	// total counts the lines ever kept: a follower's position.
	total uint64
	// changed is closed at the next line, for followers (nil until one
	// waits: no channel per line when no one follows).
	changed chan struct{}
}

func newSink(name string, out *prefixWriter) *sink {
	return &sink{name: name, out: out}
}

func (k *sink) write(line []byte) {
	report := k.keep(line)
	if k.out != nil {
		k.out.line(k.name, line)
		if report != nil {
			k.out.line(supervisorPrefix, []byte(k.name+": log file: "+report.Error()))
		}
	}
}

// keep writes line to the log file and the ring. The lock is released by
// a defer, so that a panic on the way (reported by the reader) leaves the
// sink usable for the next line.
func (k *sink) keep(line []byte) (report error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.file != nil {
		if err := k.file.writeLine(line); err != nil && !k.fileErr {
			k.fileErr, report = true, err // say it once, not once a line
		}
	}
	kept := line
	if len(kept) > maxRingLineBytes {
		kept = kept[:maxRingLineBytes]
	}
	s := string(kept)
	if len(kept) < len(line) {
		s += fmt.Sprintf(" [%d bytes cut; whole line in the log file]", len(line)-len(kept))
	}
	k.ring[k.next] = s
	k.next = (k.next + 1) % ringLines
	k.n = min(k.n+1, ringLines)
	k.total++
	if k.changed != nil {
		close(k.changed)
		k.changed = nil
	}
	return report
}

// since returns the ring's lines after the first pos lines ever kept
// (fewer when the ring no longer holds them all: dropped says how many
// it lost), the position after them, and a channel closed at the next
// line.
func (k *sink) since(pos uint64) (lines []string, next, dropped uint64, changed <-chan struct{}) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if pos > k.total {
		pos = k.total
	}
	if oldest := k.total - uint64(k.n); pos < oldest {
		dropped, pos = oldest-pos, oldest
	}
	for i := uint64(0); i < k.total-pos; i++ {
		lines = append(lines, k.ring[(k.next-int(k.total-pos)+int(i)+ringLines)%ringLines])
	}
	if k.changed == nil {
		k.changed = make(chan struct{})
	}
	return lines, k.total, dropped, k.changed
}

// lines returns the ring's lines, oldest first.
func (k *sink) lines() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]string, 0, k.n)
	for i := range k.n {
		out = append(out, k.ring[(k.next-k.n+i+ringLines)%ringLines])
	}
	return out
}

func (k *sink) setFile(f *rotatingFile) {
	k.mu.Lock()
	k.file = f
	k.mu.Unlock()
}

func (k *sink) closeFile() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.file == nil {
		return nil
	}
	err := k.file.close()
	k.file = nil
	return err
}

// rotatingFile is a log file that is renamed to path.1 (path.1 to path.2,
// and so on, keeping keep of them) before a line would take it past max
// bytes. It is appended to across runs of the node, so a restart never
// loses the previous run's last words.
type rotatingFile struct {
	path string
	max  int64
	keep int
	f    *os.File
	size int64
	buf  []byte
}

func openRotating(path string, max int64, keep int) (*rotatingFile, error) {
	r := &rotatingFile{path: path, max: max, keep: keep}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size = f, fi.Size()
	return nil
}

// writeLine writes line and a newline in one write, rotating first if
// needed. After a failed rotation or open it keeps trying at later lines,
// so a full disk that is cleaned up heals by itself.
func (r *rotatingFile) writeLine(line []byte) error {
	need := int64(len(line) + 1)
	if r.f == nil || (r.size > 0 && r.size+need > r.max) {
		if err := r.rotate(); err != nil {
			return err
		}
	}
	r.buf = append(append(r.buf[:0], line...), '\n')
	n, err := r.f.Write(r.buf)
	r.size += int64(n)
	if cap(r.buf) > maxLineBytes+1 {
		r.buf = nil
	}
	return err
}

// rotate shifts path.N-1 to path.N ... path to path.1 (the oldest falls off
// the end) and opens a fresh path. If no file is open (an earlier failure),
// it only tries to open one.
func (r *rotatingFile) rotate() error {
	if r.f != nil {
		r.f.Close()
		r.f = nil
		for i := r.keep - 1; i >= 1; i-- {
			_ = os.Rename(fmt.Sprintf("%s.%d", r.path, i), fmt.Sprintf("%s.%d", r.path, i+1))
		}
		if err := os.Rename(r.path, r.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			// Keep appending to the big file rather than losing lines.
			if oerr := r.open(); oerr != nil {
				return oerr
			}
			return err
		}
	}
	return r.open()
}

func (r *rotatingFile) close() error {
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}

// prefixWriter writes whole lines as "<name padded> | <line>" to a writer
// that is shared by every service and the supervisor, one line per Write.
type prefixWriter struct {
	mu    sync.Mutex
	w     io.Writer
	width int
	buf   []byte
}

func (o *prefixWriter) line(name string, text []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf[:0], name...)
	for i := len(name); i < o.width; i++ {
		o.buf = append(o.buf, ' ')
	}
	o.buf = append(o.buf, " | "...)
	o.buf = append(o.buf, text...)
	o.buf = append(o.buf, '\n')
	_, _ = o.w.Write(o.buf) // a console that fails must not stop the logs
	if cap(o.buf) > maxLineBytes+256 {
		o.buf = nil
	}
}
