package kernel

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ModuleName normalizes a module name or .ko path to the kernel's module
// name: the base name without .ko[.xz|.zst|.gz], with '-' replaced by '_'
// (modprobe treats them as equal).
func ModuleName(s string) string {
	s = path.Base(s)
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(s, ext) {
			s = strings.TrimSuffix(s, ext)
			break
		}
	}
	return strings.ReplaceAll(s, "-", "_")
}

// modDep is one line of modules.dep.
type modDep struct {
	path string   // relative to the modules dir
	deps []string // relative paths, as listed by depmod
}

// depTable is a parsed modules.dep plus modules.builtin.
type depTable struct {
	byName  map[string]modDep
	byPath  map[string]modDep
	builtin map[string]bool
}

func parseModulesDep(r io.Reader) (map[string]modDep, error) {
	m := map[string]modDep{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(l, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d: no ':' in %q", line, l)
		}
		d := modDep{path: strings.TrimSpace(mod), deps: strings.Fields(rest)}
		m[ModuleName(d.path)] = d
	}
	return m, sc.Err()
}

func parseBuiltin(r io.Reader) (map[string]bool, error) {
	m := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			m[ModuleName(l)] = true
		}
	}
	return m, sc.Err()
}

func (k *Kernel) depTable() (*depTable, error) {
	f, err := os.Open(filepath.Join(k.ModulesDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	byName, err := parseModulesDep(f)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	t := &depTable{byName: byName, byPath: map[string]modDep{}, builtin: map[string]bool{}}
	for _, d := range byName {
		t.byPath[d.path] = d
	}
	if bf, err := os.Open(filepath.Join(k.ModulesDir, "modules.builtin")); err == nil {
		defer bf.Close()
		if t.builtin, err = parseBuiltin(bf); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// closure returns the .ko paths needed for names, dependencies first, each
// once. Built-in modules need no file and are skipped.
func (t *depTable) closure(names []string) ([]string, error) {
	var out []string
	done := map[string]bool{}
	visiting := map[string]bool{}
	var visit func(d modDep) error
	visit = func(d modDep) error {
		if done[d.path] {
			return nil
		}
		if visiting[d.path] {
			return fmt.Errorf("module dependency cycle through %s", d.path)
		}
		visiting[d.path] = true
		// depmod lists the dependencies so that modprobe loads them
		// last-to-first; visit them in that order.
		for i := len(d.deps) - 1; i >= 0; i-- {
			dd, ok := t.byPath[d.deps[i]]
			if !ok {
				dd = modDep{path: d.deps[i]}
			}
			if err := visit(dd); err != nil {
				return err
			}
		}
		visiting[d.path] = false
		done[d.path] = true
		out = append(out, d.path)
		return nil
	}
	var unknown []string
	for _, n := range names {
		name := ModuleName(n)
		d, ok := t.byName[name]
		if !ok {
			if t.builtin[name] {
				continue
			}
			unknown = append(unknown, n)
			continue
		}
		if err := visit(d); err != nil {
			return nil, err
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("unknown kernel modules (neither in modules.dep nor modules.builtin): %s", strings.Join(unknown, ", "))
	}
	return out, nil
}

// ModuleClosure resolves modules.dep: it returns the .ko files (paths
// relative to ModulesDir, e.g. "kernel/net/bridge/bridge.ko") needed to load
// the named modules, dependencies first, each once. Names may use '-' or '_'
// and may be given as .ko paths. Modules built into the kernel
// (modules.builtin) need no file and are left out; an unknown name is an
// error.
func (k *Kernel) ModuleClosure(names ...string) ([]string, error) {
	t, err := k.depTable()
	if err != nil {
		return nil, err
	}
	out, err := t.closure(names)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	return out, nil
}

// IsBuiltin reports whether a module is built into the kernel image.
func (k *Kernel) IsBuiltin(name string) (bool, error) {
	t, err := k.depTable()
	if err != nil {
		return false, err
	}
	return t.builtin[ModuleName(name)], nil
}

// ModuleIndexFiles lists the depmod index files present in ModulesDir
// (modules.dep, modules.dep.bin, modules.alias, modules.builtin,
// modules.order, ...), relative to it, sorted. An image that loads modules
// needs them next to the .ko files.
func (k *Kernel) ModuleIndexFiles() ([]string, error) {
	ents, err := os.ReadDir(k.ModulesDir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), "modules.") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}
