package bounded

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	os.WriteFile(small, []byte("hello"), 0o644)
	if b, err := ReadFile(small, 5); err != nil || string(b) != "hello" {
		t.Errorf("at the cap: %q %v", b, err)
	}
	err := func() error { _, err := ReadFile(small, 4); return err }()
	var tl *TooLargeError
	if !errors.As(err, &tl) || err.Error() != "read "+small+": larger than 4 bytes, the most kiln reads from such a file" {
		t.Errorf("over the cap: %v", err)
	}
	if _, err := ReadFile(filepath.Join(dir, "missing"), 5); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	if b, err := ReadFile(empty, 5); err != nil || len(b) != 0 {
		t.Errorf("empty: %q %v", b, err)
	}
	// A file that never ends (a config symlinked to /dev/zero) stops at
	// the cap instead of filling the memory.
	zero := filepath.Join(dir, "zero")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	_, err = ReadFile(zero, MaxKeyFile)
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), zero+": larger than 1 MiB") {
		t.Errorf("/dev/zero: %v", err)
	}
}

func TestQuote(t *testing.T) {
	if got := Quote("eth0"); got != `"eth0"` {
		t.Errorf("short: %s", got)
	}
	long := strings.Repeat("a", 50<<20)
	if got, want := Quote(long), `"`+strings.Repeat("a", 64)+`"… (52428800 bytes)`; got != want {
		t.Errorf("long: %.100s", got)
	}
	if got := Cut(long); got != strings.Repeat("a", 64)+"… (52428800 bytes)" || Cut("v") != "v" {
		t.Errorf("Cut: %.100s", got)
	}
	// A cut never splits a character.
	s := strings.Repeat("a", 63) + "é" + strings.Repeat("b", 10)
	if got := Quote(s); got != `"`+strings.Repeat("a", 63)+`"… (75 bytes)` {
		t.Errorf("utf-8: %s", got)
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{1 << 20: "1 MiB", 4 << 20: "4 MiB", 2048: "2 KiB", 100: "100 bytes"} {
		if got := Size(n); got != want {
			t.Errorf("%d: %s", n, got)
		}
	}
}

// Quote and Cut never panic, keep valid UTF-8 valid, and stay short.
func FuzzQuote(f *testing.F) {
	f.Add("eth0")
	f.Add(strings.Repeat("é", 40))
	f.Add(strings.Repeat("\xff", 70))
	f.Fuzz(func(t *testing.T, s string) {
		q, c := Quote(s), Cut(s)
		if len(q) > 4*MaxEcho+40 || len(c) > MaxEcho+30 {
			t.Errorf("%d bytes: quote %d, cut %d", len(s), len(q), len(c))
		}
		if utf8.ValidString(s) && !utf8.ValidString(c) {
			t.Errorf("cut %q of valid %q is not UTF-8", c, s)
		}
	})
}
