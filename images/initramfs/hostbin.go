package initramfs

import (
	"debug/elf"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// libraryDirs are searched, in order, for a shared library that an ELF file
// needs and that its RUNPATH/RPATH does not provide: Debian's multiarch
// directories first, then the legacy ones. glibc's dynamic loader searches
// the same multiarch directories by default, so libraries placed there work
// without an ld.so.cache in the image.
var libraryDirs = []string{
	"/lib/x86_64-linux-gnu",
	"/usr/lib/x86_64-linux-gnu",
	"/lib64",
	"/usr/lib64",
	"/lib",
	"/usr/lib",
	"/usr/local/lib",
}

// AddHostBinary copies the host ELF executable hostPath to destPath in the
// archive together with everything it needs to run: its dynamic loader
// (PT_INTERP, /lib64/ld-linux-x86-64.so.2 on amd64) and the transitive
// closure of its DT_NEEDED libraries, resolved like ld.so does (RUNPATH or
// RPATH with $ORIGIN, then libraryDirs). Each library goes to the archive
// under its name in the host directory where it was found, with symlinked
// directories resolved (/lib/x86_64-linux-gnu/libc.so.6 becomes
// usr/lib/x86_64-linux-gnu/libc.so.6 on a merged-/usr host), as a regular
// file. A static binary is copied alone. Libraries that are dlopen()ed at run
// time (NSS modules, plugins) are not seen and must be added separately.
func (a *Archive) AddHostBinary(hostPath, destPath string) error {
	files, err := ELFDeps(hostPath)
	if err != nil {
		return err
	}
	a.FileFrom(destPath, hostPath, 0)
	for _, f := range files {
		a.FileFrom(f.Dest, f.Host, 0)
	}
	return nil
}

// ELFFile is a file an ELF executable needs at run time: Host is where it is
// read from, Dest its absolute path inside the image.
type ELFFile struct {
	Host string
	Dest string
}

// ELFDeps returns the dynamic loader and the shared libraries (transitively)
// needed by the ELF file at hostPath, loader first, then in discovery order.
// A static executable has none.
func ELFDeps(hostPath string) ([]ELFFile, error) {
	f, err := elf.Open(hostPath)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %s: %w", hostPath, err)
	}
	defer f.Close()
	machine, class := f.Machine, f.Class

	var out []ELFFile
	seen := map[string]bool{} // by destination path
	add := func(host, dest string) bool {
		if seen[dest] {
			return false
		}
		seen[dest] = true
		out = append(out, ELFFile{Host: host, Dest: dest})
		return true
	}

	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return nil, fmt.Errorf("initramfs: %s: reading PT_INTERP: %w", hostPath, err)
		}
		interp := strings.TrimRight(string(b), "\x00")
		if _, err := os.Stat(interp); err != nil {
			return nil, fmt.Errorf("initramfs: %s: dynamic loader: %w", hostPath, err)
		}
		// The kernel opens the loader by exactly this path.
		add(interp, interp)
	}

	queue := []string{hostPath}
	resolved := map[string]bool{} // sonames done
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		needed, search, err := dynInfo(cur)
		if err != nil {
			return nil, err
		}
		for _, so := range needed {
			if resolved[so] {
				continue
			}
			host, err := findLib(so, search, machine, class)
			if err != nil {
				return nil, fmt.Errorf("initramfs: %s (needed by %s): %w", so, cur, err)
			}
			resolved[so] = true
			dest := libDest(host)
			if interpIs(out, host) {
				// libc needs the loader by soname: it is the same
				// file, which ld.so recognizes as itself.
				continue
			}
			if add(host, dest) {
				queue = append(queue, host)
			}
		}
	}
	return out, nil
}

// interpIs reports whether host is the same file as the loader in out.
func interpIs(out []ELFFile, host string) bool {
	if len(out) == 0 {
		return false
	}
	a, err1 := os.Stat(out[0].Host)
	b, err2 := os.Stat(host)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// dynInfo returns DT_NEEDED and the RUNPATH (or RPATH) directories of an ELF
// file, with $ORIGIN expanded.
func dynInfo(p string) (needed, search []string, err error) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, nil, fmt.Errorf("initramfs: %s: %w", p, err)
	}
	defer f.Close()
	if f.Section(".dynamic") == nil {
		return nil, nil, nil // static
	}
	needed, err = f.ImportedLibraries()
	if err != nil {
		return nil, nil, fmt.Errorf("initramfs: %s: DT_NEEDED: %w", p, err)
	}
	paths, _ := f.DynString(elf.DT_RUNPATH)
	if len(paths) == 0 {
		paths, _ = f.DynString(elf.DT_RPATH)
	}
	origin := filepath.Dir(p)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		origin = filepath.Dir(r)
	}
	for _, ps := range paths {
		for _, d := range strings.Split(ps, ":") {
			if d == "" {
				continue
			}
			d = strings.ReplaceAll(d, "${ORIGIN}", origin)
			d = strings.ReplaceAll(d, "$ORIGIN", origin)
			search = append(search, d)
		}
	}
	return needed, search, nil
}

// findLib finds soname in search then libraryDirs, skipping files of another
// architecture (i386 libraries in /lib, for instance).
func findLib(soname string, search []string, machine elf.Machine, class elf.Class) (string, error) {
	if strings.Contains(soname, "/") {
		return soname, nil
	}
	dirs := append(append([]string{}, search...), libraryDirs...)
	for _, d := range dirs {
		p := filepath.Join(d, soname)
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		ok := f.Machine == machine && f.Class == class
		f.Close()
		if ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("shared library not found in %s", strings.Join(dirs, ":"))
}

// libDest is the image path for a library found at host: the host directory
// with symlinks resolved, and the file name as looked up (the soname).
func libDest(host string) string {
	dir := filepath.Dir(host)
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	return path.Join("/", filepath.ToSlash(dir), filepath.Base(host))
}
