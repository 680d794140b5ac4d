// Package bounded keeps bad input from costing unbounded memory or output:
// ReadFile reads a file up to a cap (a config symlinked to /dev/zero must
// fail, not fill the machine), and Quote shortens a value echoed in an
// error (a 50 MiB hostname is not printed back whole).
package bounded

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"unicode/utf8"
)

// Caps of the files kiln reads.
const (
	// MaxKeyFile caps a key, a certificate, a kubeconfig or a token file.
	MaxKeyFile = 1 << 20
	// MaxConfigFile caps a config file (a node config, cluster.yaml).
	MaxConfigFile = 4 << 20
)

// TooLargeError is a file larger than its cap.
type TooLargeError struct{ Max int64 }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("larger than %s, the most kiln reads from such a file", Size(e.Max))
}

// ReadFile reads path like os.ReadFile, but fails once it has read more
// than max bytes. Errors are *fs.PathError, as os.ReadFile's, so callers
// word them the same way: "open PATH: no such file or directory", "read
// PATH: larger than 1 MiB, the most kiln reads from such a file".
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := 512
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
		if fi.Size() > max {
			return nil, &fs.PathError{Op: "read", Path: path, Err: &TooLargeError{Max: max}}
		}
		size = int(fi.Size()) + 1 // +1 to see EOF at once
	}
	data := make([]byte, 0, size)
	data, err = readAll(io.LimitReader(f, max+1), data)
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: path, Err: err}
	}
	if int64(len(data)) > max {
		return nil, &fs.PathError{Op: "read", Path: path, Err: &TooLargeError{Max: max}}
	}
	return data, nil
}

func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// Size words a byte count: "1 MiB", "4 KiB", "100 bytes".
func Size(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// MaxEcho is how many bytes of a value Quote shows.
const MaxEcho = 64

// Quote is strconv.Quote for a value echoed in a message, shortened when
// it is long: the first MaxEcho bytes (cut at a character boundary), then
// "… (N bytes)". Every message that echoes a value from outside (a config
// field, a flag, a command line word) goes through it, or through Cut.
func Quote(s string) string {
	head, cut := prefix(s)
	if !cut {
		return strconv.Quote(s)
	}
	return strconv.Quote(head) + fmt.Sprintf("… (%d bytes)", len(s))
}

// Cut is Quote without the quotes, for values a message shows bare
// ("--v=2 (default 0)").
func Cut(s string) string { return Shorten(s, MaxEcho) }

// Shorten is Cut at n bytes instead of MaxEcho, for longer texts a message
// quotes (a server's error answer).
func Shorten(s string, n int) string {
	head, cut := prefixN(s, n)
	if !cut {
		return s
	}
	return head + fmt.Sprintf("… (%d bytes)", len(s))
}

// prefix returns s's first MaxEcho bytes, cut at a character boundary,
// and whether that is less than s.
func prefix(s string) (string, bool) { return prefixN(s, MaxEcho) }

func prefixN(s string, n int) (string, bool) {
	if len(s) <= n {
		return s, false
	}
	cut := n
	for cut > 0 && cut > n-utf8.UTFMax && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut], true
}
