// Package kmod loads the kernel modules a list names, with finit_module(2),
// using the module index (modules.dep, modules.builtin) of the running
// kernel. A leaf: both PID 1 (init/boot) and the initramfs' first stage
// (init/stage1), which must stay small, use it.
package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Report says what Load did.
type Report struct {
	Loaded   []string // loaded now
	Present  []string // already loaded or built into the kernel
	Warnings []string // missing or failing modules
}

func (r Report) String() string {
	return fmt.Sprintf("%d loaded, %d already there, %d failed", len(r.Loaded), len(r.Present), len(r.Warnings))
}

// moduleEntry is one line of the modules list.
type moduleEntry struct {
	Name   string
	Params string
}

// parseModuleList reads the modules list.
func parseModuleList(data string) []moduleEntry {
	var out []moduleEntry
	for _, l := range strings.Split(data, "\n") {
		if i := strings.IndexByte(l, '#'); i >= 0 {
			l = l[:i]
		}
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		out = append(out, moduleEntry{Name: moduleName(f[0]), Params: strings.Join(f[1:], " ")})
	}
	return out
}

// moduleName normalizes a module's name or file path: "kernel/x/virtio-net.ko"
// and "virtio-net" are both "virtio_net".
func moduleName(s string) string {
	s = path.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	return strings.ReplaceAll(strings.TrimSuffix(s, ".ko"), "-", "_")
}

// moduleIndex maps module names to their files (from modules.dep) and
// knows the built-in ones (modules.builtin).
type moduleIndex struct {
	dir     string
	files   map[string]string
	builtin map[string]bool
}

func readModuleIndex(dir string) (*moduleIndex, error) {
	idx := &moduleIndex{dir: dir, files: map[string]string{}, builtin: map[string]bool{}}
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if p, _, ok := strings.Cut(sc.Text(), ":"); ok {
			idx.files[moduleName(p)] = filepath.Join(dir, p)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			idx.builtin[moduleName(l)] = true
		}
	}
	return idx, nil
}

// Load loads each module of the list with finit_module(2). A module
// already loaded or built in is fine; a missing or failing one is a
// warning: the node may well boot without it.
func Load(listFile, modDir string) (Report, error) {
	var r Report
	data, err := os.ReadFile(listFile)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	entries := parseModuleList(string(data))
	if len(entries) == 0 {
		return r, nil
	}
	idx, err := readModuleIndex(modDir)
	if err != nil {
		r.Warnings = append(r.Warnings, fmt.Sprintf("no module index for this kernel (%v): no module loaded", err))
		return r, nil
	}
	for _, e := range entries {
		switch err := idx.load(e); {
		case err == nil:
			r.Loaded = append(r.Loaded, e.Name)
		case errors.Is(err, errPresent):
			r.Present = append(r.Present, e.Name)
		default:
			r.Warnings = append(r.Warnings, fmt.Sprintf("module %s: %v", e.Name, err))
		}
	}
	return r, nil
}

var errPresent = errors.New("already loaded")

func (idx *moduleIndex) load(e moduleEntry) error {
	if idx.builtin[e.Name] {
		return errPresent
	}
	if _, err := os.Stat(filepath.Join("/sys/module", e.Name, "initstate")); err == nil {
		return errPresent
	}
	file, ok := idx.files[e.Name]
	if !ok {
		return fmt.Errorf("not in %s/modules.dep", idx.dir)
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(file, ".xz") || strings.HasSuffix(file, ".zst") || strings.HasSuffix(file, ".gz") {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), e.Params, flags)
	if errors.Is(err, unix.EEXIST) {
		return errPresent
	}
	if err != nil {
		return fmt.Errorf("finit_module %s: %w", file, err)
	}
	return nil
}

// Release is the running kernel's release (uname -r).
func Release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
