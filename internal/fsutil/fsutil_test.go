package fsutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	if err := os.WriteFile(src, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, []byte("old contents"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := CopyFile(dst, src, 0o600)
	if err != nil || n != 5 {
		t.Fatalf("CopyFile = %d, %v; want 5, nil", n, err)
	}
	got, _ := os.ReadFile(dst)
	st, _ := os.Stat(dst)
	if string(got) != "hello" || st.Mode().Perm() != 0o600 {
		t.Errorf("dst = %q mode %v; want \"hello\" 0600", got, st.Mode().Perm())
	}
	// A failed copy leaves dst alone and no temporary file behind.
	if _, err := CopyFile(dst, filepath.Join(dir, "missing"), 0o644); err == nil {
		t.Error("copying a missing file succeeded")
	}
	if got, _ := os.ReadFile(dst); string(got) != "hello" {
		t.Errorf("dst after a failed copy = %q", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("directory holds %d entries after the copies, want 2 (src, dst)", len(ents))
	}
}
