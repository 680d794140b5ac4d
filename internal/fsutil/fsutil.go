// Package fsutil holds the file helpers both binaries share.
package fsutil

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// CopyFile copies the regular file src to dst with the given mode and
// returns the bytes copied. The bytes go to a temporary file beside dst
// that is renamed over it at the end, so a reader never sees half a file
// and a failed copy leaves dst as it was.
func CopyFile(dst, src string, mode fs.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(tmp, in)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dst)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return 0, err
	}
	return n, nil
}

// SyncDir syncs a directory: the renames and removals in it are on disk.
// A file system that cannot sync a directory (EINVAL) is not an error.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// ReplaceSynced writes what r holds to path.new, lets check see how many
// bytes that was (nil: no check; its error leaves path as it was),
// syncs the file, renames it over path and syncs the directory: after a
// power cut path is the old file or the new one, whole.
func ReplaceSynced(path string, r io.Reader, mode fs.FileMode, check func(written int64) error) error {
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, r)
	if err == nil && check != nil {
		err = check(n)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
}
