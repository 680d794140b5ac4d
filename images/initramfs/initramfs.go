// Package initramfs writes Linux initramfs images: reproducible "newc" cpio
// archives (fixed mtime, uid/gid 0, sorted entries, inode numbers by
// position), optionally zstd-compressed, built in memory from Go and from
// host files, which are streamed rather than read whole (the node binary is
// ~170 MB).
package initramfs

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"kiln/configs/image"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// Unix file type and permission bits as stored in a cpio header.
const (
	modeTypeMask = 0o170000
	modeDir      = 0o040000
	modeFile     = 0o100000
	modeSymlink  = 0o120000
	modeCharDev  = 0o020000
	modeBlockDev = 0o060000
	modeFIFO     = 0o010000
)

type entry struct {
	name     string // cleaned, relative ("init", "dev/console")
	mode     uint32 // unix mode: type | setuid/setgid/sticky | perm
	data     []byte // regular file contents (when hostPath is empty)
	hostPath string // regular file streamed from the host
	hostPerm bool   // take the permission bits from hostPath
	target   string // symlink target
	rmajor   uint32 // device numbers
	rminor   uint32
}

// Archive is an initramfs being assembled. Adding a path that is already
// present replaces the earlier entry. Parent directories are created
// implicitly (mode 0755) when they are not added explicitly. The zero value
// is not usable: call New.
type Archive struct {
	entries map[string]*entry
	// ModTime is the mtime of every entry, in seconds since the epoch
	// (default 0), so that the same inputs give the same bytes.
	ModTime int64
	err     error // first error of an add method, reported by WriteTo
}

// New returns an empty archive.
func New() *Archive { return &Archive{entries: map[string]*entry{}} }

// clean turns "/a/b/" into "a/b"; "" and "/" become ".".
func clean(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return p[1:]
}

// unixMode converts an os.FileMode's permission and special bits.
func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

func (a *Archive) add(p string, e *entry) {
	e.name = clean(p)
	if e.name == "." {
		if a.err == nil {
			a.err = fmt.Errorf("initramfs: cannot add the root directory %q as an entry", p)
		}
		return
	}
	a.entries[e.name] = e
}

// Dir adds a directory.
func (a *Archive) Dir(p string, mode os.FileMode) {
	a.add(p, &entry{mode: modeDir | unixMode(mode)})
}

// File adds a regular file with the given contents.
func (a *Archive) File(p string, data []byte, mode os.FileMode) {
	a.add(p, &entry{mode: modeFile | unixMode(mode), data: data})
}

// FileFrom adds a regular file whose contents are streamed from hostPath
// when the archive is written (symlinks are followed). A mode of 0 takes the
// permission bits of the host file.
func (a *Archive) FileFrom(p, hostPath string, mode os.FileMode) {
	a.add(p, &entry{mode: modeFile | unixMode(mode), hostPath: hostPath, hostPerm: mode == 0})
}

// Symlink adds a symbolic link p → target.
func (a *Archive) Symlink(p, target string) {
	a.add(p, &entry{mode: modeSymlink | 0o777, target: target})
}

// CharDev adds a character device node (e.g. /dev/console, 5:1).
func (a *Archive) CharDev(p string, mode os.FileMode, major, minor uint32) {
	a.add(p, &entry{mode: modeCharDev | unixMode(mode), rmajor: major, rminor: minor})
}

// BlockDev adds a block device node.
func (a *Archive) BlockDev(p string, mode os.FileMode, major, minor uint32) {
	a.add(p, &entry{mode: modeBlockDev | unixMode(mode), rmajor: major, rminor: minor})
}

// Has reports whether p was added explicitly.
func (a *Archive) Has(p string) bool {
	_, ok := a.entries[clean(p)]
	return ok
}

// Paths returns the explicitly added paths, sorted.
func (a *Archive) Paths() []string {
	out := make([]string, 0, len(a.entries))
	for n := range a.entries {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Extract moves the entries at each of the paths (and under them) into a
// new archive, under the same names, and returns it.
func (a *Archive) Extract(paths ...string) *Archive {
	out := New()
	out.ModTime = a.ModTime
	for n, e := range a.entries {
		for _, p := range paths {
			p = clean(p)
			if n == p || strings.HasPrefix(n, p+"/") {
				out.entries[n] = e
				delete(a.entries, n)
				break
			}
		}
	}
	return out
}

// Merge adds b's entries to a under dir ("etc/kiln/x" of b is
// dir/etc/kiln/x of a).
func (a *Archive) Merge(b *Archive, dir string) {
	for n, e := range b.entries {
		c := *e
		a.add(path.Join(dir, n), &c)
	}
	if b.err != nil && a.err == nil {
		a.err = b.err
	}
}

// Digest is a sha256 of everything the archive holds: each entry's name,
// type, mode, link target, device numbers and contents (host files read
// now), in write order. Archives with the same digest write the same
// bytes, whatever the host files' times: a cache key.
func (a *Archive) Digest() (string, error) {
	list, err := a.sorted()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, e := range list {
		fmt.Fprintf(h, "%q %o %q %d:%d\n", e.name, e.mode, e.target, e.rmajor, e.rminor)
		if e.mode&modeTypeMask != modeFile {
			continue
		}
		if e.hostPath == "" {
			fmt.Fprintf(h, "%d\n", len(e.data))
			h.Write(e.data)
			continue
		}
		f, err := os.Open(e.hostPath)
		if err != nil {
			return "", err
		}
		fi, err := f.Stat()
		if err == nil {
			if e.hostPerm {
				fmt.Fprintf(h, "perm %o\n", unixMode(fi.Mode()))
			}
			fmt.Fprintf(h, "%d\n", fi.Size())
			_, err = io.Copy(h, f)
		}
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// AddDevConsole adds /dev/console (5:1, 0600), which the kernel opens as
// PID 1's stdin/stdout/stderr before /init runs: without it in the
// initramfs, /init starts with no console (devtmpfs is not mounted yet).
func (a *Archive) AddDevConsole() {
	a.CharDev("dev/console", 0o600, 5, 1)
}

// sorted returns all entries, implicit parents included, in write order.
func (a *Archive) sorted() ([]*entry, error) {
	if a.err != nil {
		return nil, a.err
	}
	all := make(map[string]*entry, len(a.entries))
	for n, e := range a.entries {
		all[n] = e
	}
	for n := range a.entries {
		for d := path.Dir(n); d != "."; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = &entry{name: d, mode: modeDir | 0o755}
			}
		}
	}
	list := make([]*entry, 0, len(all))
	for _, e := range all {
		list = append(list, e)
	}
	// Plain byte order puts every directory before its contents ("a" <
	// "a/..."), which is what the kernel's unpacker needs.
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	for _, e := range list {
		if d := path.Dir(e.name); d != "." {
			if p := all[d]; p.mode&modeTypeMask != modeDir {
				return nil, fmt.Errorf("initramfs: %s: parent %s is not a directory (mode %o)", e.name, d, p.mode)
			}
		}
	}
	return list, nil
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

var zeros [4]byte

func pad4(n int64) int64 { return (4 - n%4) % 4 }

func writeHeader(w *countWriter, ino uint32, mode uint32, nlink uint32, mtime int64, size int64, rmajor, rminor uint32, name string) error {
	if size > 0xffffffff {
		return fmt.Errorf("initramfs: %s: %d bytes is too large for newc (4 GiB max)", name, size)
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, uint32(mtime), uint32(size), 0, 0, rmajor, rminor, len(name)+1, 0)
	if _, err := io.WriteString(w, hdr); err != nil {
		return err
	}
	if _, err := io.WriteString(w, name); err != nil {
		return err
	}
	// NUL terminator plus padding of header+name to 4 bytes.
	_, err := w.Write(zeros[:1+pad4(int64(len(hdr)+len(name)+1))])
	return err
}

// WriteTo writes the uncompressed newc archive, ending with the TRAILER!!!
// entry, and returns the number of bytes written. Host files added with
// FileFrom are opened and streamed now.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	list, err := a.sorted()
	if err != nil {
		return 0, err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := &countWriter{w: bw}
	for i, e := range list {
		if err := a.writeEntry(cw, uint32(i+1), e); err != nil {
			return cw.n, err
		}
	}
	// The marker goes last, out of name order: if the kernel ran out of
	// memory unpacking (it says "Initramfs unpacking failed" and boots on
	// with what it has), the marker is what is missing.
	if err := writeHeader(cw, uint32(len(list)+1), modeFile|0o444, 1, a.ModTime, 0, 0, 0, image.CompleteMarker); err != nil {
		return cw.n, err
	}
	if err := writeHeader(cw, 0, 0, 1, 0, 0, 0, 0, "TRAILER!!!"); err != nil {
		return cw.n, err
	}
	return cw.n, bw.Flush()
}

func (a *Archive) writeEntry(w *countWriter, ino uint32, e *entry) error {
	switch e.mode & modeTypeMask {
	case modeDir:
		return writeHeader(w, ino, e.mode, 2, a.ModTime, 0, 0, 0, e.name)
	case modeSymlink:
		if err := writeHeader(w, ino, e.mode, 1, a.ModTime, int64(len(e.target)), 0, 0, e.name); err != nil {
			return err
		}
		if _, err := io.WriteString(w, e.target); err != nil {
			return err
		}
		_, err := w.Write(zeros[:pad4(int64(len(e.target)))])
		return err
	case modeCharDev, modeBlockDev, modeFIFO:
		return writeHeader(w, ino, e.mode, 1, a.ModTime, 0, e.rmajor, e.rminor, e.name)
	case modeFile:
		if e.hostPath == "" {
			if err := writeHeader(w, ino, e.mode, 1, a.ModTime, int64(len(e.data)), 0, 0, e.name); err != nil {
				return err
			}
			if _, err := w.Write(e.data); err != nil {
				return err
			}
			_, err := w.Write(zeros[:pad4(int64(len(e.data)))])
			return err
		}
		f, err := os.Open(e.hostPath)
		if err != nil {
			return fmt.Errorf("initramfs: %s: %w", e.name, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("initramfs: %s: %w", e.name, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("initramfs: %s: host file %s is not a regular file", e.name, e.hostPath)
		}
		mode := e.mode
		if e.hostPerm {
			mode = modeFile | unixMode(fi.Mode())
		}
		size := fi.Size()
		if err := writeHeader(w, ino, mode, 1, a.ModTime, size, 0, 0, e.name); err != nil {
			return err
		}
		n, err := io.CopyN(w, f, size)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("host file %s shrank while being copied (%d of %d bytes)", e.hostPath, n, size)
			}
			return fmt.Errorf("initramfs: %s: %w", e.name, err)
		}
		_, err = w.Write(zeros[:pad4(size)])
		return err
	}
	return fmt.Errorf("initramfs: %s: unsupported mode %o", e.name, e.mode)
}

// zstdConcurrency is fixed (not GOMAXPROCS) so that the compressed bytes do
// not depend on the machine.
const zstdConcurrency = 2

// WriteZstd writes the archive, zstd-compressed (the Debian kernels have
// CONFIG_RD_ZSTD=y), to path (via a temp file renamed into place), mode
// 0600: an initramfs may hold keys (a master's holds the cluster's). It
// returns the uncompressed and compressed sizes.
func WriteZstd(p string, a *Archive) (raw, compressed int64, err error) {
	return WriteZstdMode(p, a, 0o600)
}

// WriteZstdMode is WriteZstd with the file's permission bits (0644 for an
// archive that holds no secret worth hiding from the host's users).
func WriteZstdMode(p string, a *Archive, perm fs.FileMode) (raw, compressed int64, err error) {
	dir := filepath.Dir(p)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(p)+".tmp-")
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	cw := &countWriter{w: tmp}
	enc, err := zstd.NewWriter(cw,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(zstdConcurrency),
		zstd.WithEncoderCRC(true),
	)
	if err != nil {
		return 0, 0, err
	}
	raw, err = a.WriteTo(enc)
	if err != nil {
		enc.Close()
		return raw, cw.n, err
	}
	if err = enc.Close(); err != nil {
		return raw, cw.n, err
	}
	if err = tmp.Chmod(perm.Perm()); err != nil {
		return raw, cw.n, err
	}
	if err = tmp.Close(); err != nil {
		return raw, cw.n, err
	}
	if err = os.Rename(tmp.Name(), p); err != nil {
		return raw, cw.n, err
	}
	return raw, cw.n, nil
}

// WriteFile writes the uncompressed archive to path, mode 0600 (see
// WriteZstd).
func WriteFile(p string, a *Archive) (int64, error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return 0, err
	}
	n, err := a.WriteTo(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// WritePlainMode writes the uncompressed archive to path (via a temp file
// renamed into place) with the given permission bits and returns its size.
// An archive whose bulk is already compressed (a squashfs root image) is
// better left so: compressing it again saves nothing and costs the kernel
// a decompression pass at every boot.
func WritePlainMode(p string, a *Archive, perm fs.FileMode) (n int64, err error) {
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp-")
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if n, err = a.WriteTo(bw); err != nil {
		return n, err
	}
	if err = bw.Flush(); err != nil {
		return n, err
	}
	if err = tmp.Chmod(perm.Perm()); err != nil {
		return n, err
	}
	if err = tmp.Close(); err != nil {
		return n, err
	}
	return n, os.Rename(tmp.Name(), p)
}

// WriteDir lays the archive's entries out as a tree under dir (which must
// exist): directories, regular files (streamed from the host where they
// were added with FileFrom) and symlinks, with their permission bits, for
// tools that take a directory (mksquashfs). Ownership and times are the
// tool's to set. Device nodes are refused: a root image gets /dev from
// devtmpfs. It returns the number of regular files and their total size.
func (a *Archive) WriteDir(dir string) (files int, size int64, err error) {
	list, err := a.sorted()
	if err != nil {
		return 0, 0, err
	}
	var dirs []*entry
	for _, e := range list {
		dst := filepath.Join(dir, filepath.FromSlash(e.name))
		switch e.mode & modeTypeMask {
		case modeDir:
			if err := os.Mkdir(dst, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return files, size, err
			}
			dirs = append(dirs, e) // modes last: a 0555 directory must still be written into
		case modeSymlink:
			if err := os.Symlink(e.target, dst); err != nil {
				return files, size, err
			}
		case modeFile:
			n, err := e.writeFile(dst)
			if err != nil {
				return files, size, err
			}
			files++
			size += n
		default:
			return files, size, fmt.Errorf("initramfs: %s: a device or FIFO (mode %o) cannot be laid out as a directory tree", e.name, e.mode)
		}
	}
	for _, e := range dirs {
		if err := os.Chmod(filepath.Join(dir, filepath.FromSlash(e.name)), goFileMode(e.mode)); err != nil {
			return files, size, err
		}
	}
	return files, size, nil
}

// writeFile writes a regular file entry to dst with its mode.
func (e *entry) writeFile(dst string) (int64, error) {
	mode := e.mode
	var src io.Reader = bytes.NewReader(e.data)
	if e.hostPath != "" {
		f, err := os.Open(e.hostPath)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		if e.hostPerm {
			fi, err := f.Stat()
			if err != nil {
				return 0, err
			}
			mode = mode&^0o7777 | unixMode(fi.Mode())
		}
		src = f
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, src)
	if err == nil {
		err = out.Chmod(goFileMode(mode))
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// goFileMode turns a unix mode's permission and special bits into Go's.
func goFileMode(m uint32) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// AddTree copies a host directory tree under dest: directories, regular files
// (streamed) and symlinks, with their host permissions. Other file types are
// an error.
func (a *Archive) AddTree(hostDir, dest string) error {
	return filepath.WalkDir(hostDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(hostDir, p)
		if err != nil {
			return err
		}
		target := path.Join(dest, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if clean(target) != "." {
				a.Dir(target, info.Mode())
			}
		case d.Type().IsRegular():
			a.FileFrom(target, p, info.Mode().Perm()|info.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky))
		case d.Type()&os.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			a.Symlink(target, t)
		default:
			return fmt.Errorf("initramfs: AddTree: %s: unsupported file type %s", p, d.Type())
		}
		return nil
	})
}
