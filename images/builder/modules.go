package builder

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"kiln/images/kernel"
)

// moduleFiles resolves baseModules (and the hardwareModules the kernel has) to
// .ko files in load order: modules.dep dependencies first (ModuleClosure),
// and the modules named by soft dependencies (modules.softdep "pre:", e.g.
// libcrc32c needs a crc32c implementation loaded before it, which the
// generic kernel has as a module) before all of those.
func moduleFiles(k *kernel.Kernel) ([]string, error) {
	names := append([]string{}, baseModules...)
	for _, m := range hardwareModules {
		if _, err := k.ModuleClosure(m); err == nil {
			names = append(names, m)
		}
	}
	soft, err := readSoftdeps(k.ModulesDir)
	if err != nil {
		return nil, err
	}
	aliases, err := readAliases(k.ModulesDir)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, n := range names {
		have[kernel.ModuleName(n)] = true
	}
	// Adding a soft dependency can bring new modules with their own: go
	// round until nothing changes (the lists are short).
	for round := 0; ; round++ {
		files, err := k.ModuleClosure(names...)
		if err != nil {
			return nil, fmt.Errorf("kernel modules: %w", err)
		}
		var pre, post []string
		for _, f := range files {
			sd := soft[kernel.ModuleName(f)]
			for _, list := range []struct {
				deps []string
				to   *[]string
			}{{sd.pre, &pre}, {sd.post, &post}} {
				for _, d := range list.deps {
					for _, m := range resolveModule(k, aliases, d) {
						if !have[m] {
							have[m] = true
							*list.to = append(*list.to, m)
						}
					}
				}
			}
		}
		if len(pre)+len(post) == 0 || round > 10 {
			return files, nil
		}
		names = append(append(pre, names...), post...)
	}
}

type softdep struct{ pre, post []string }

// readSoftdeps parses modules.softdep ("softdep MOD pre: A B post: C").
func readSoftdeps(dir string) (map[string]softdep, error) {
	out := map[string]softdep{}
	f, err := os.Open(filepath.Join(dir, "modules.softdep"))
	if os.IsNotExist(err) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[0] != "softdep" {
			continue
		}
		mod := kernel.ModuleName(fields[1])
		sd := out[mod]
		var to *[]string
		for _, w := range fields[2:] {
			switch w {
			case "pre:":
				to = &sd.pre
			case "post:":
				to = &sd.post
			default:
				if to != nil { // words outside a section: kmod ignores them too
					*to = append(*to, w)
				}
			}
		}
		out[mod] = sd
	}
	return out, sc.Err()
}

// readAliases parses the exact (wildcard-free) aliases of modules.alias.
func readAliases(dir string) (map[string][]string, error) {
	out := map[string][]string{}
	f, err := os.Open(filepath.Join(dir, "modules.alias"))
	if os.IsNotExist(err) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 || fields[0] != "alias" || strings.ContainsAny(fields[1], "*?[") {
			continue
		}
		out[fields[1]] = append(out[fields[1]], kernel.ModuleName(fields[2]))
	}
	return out, sc.Err()
}

// resolveModule maps a soft dependency (a module name or an alias such as
// "crc32c") to the loadable modules providing it; built-in or unknown ones
// give none.
func resolveModule(k *kernel.Kernel, aliases map[string][]string, name string) []string {
	cands := []string{kernel.ModuleName(name)}
	if a, ok := aliases[name]; ok {
		cands = a
	}
	var out []string
	for _, c := range cands {
		if files, err := k.ModuleClosure(c); err == nil && len(files) > 0 {
			out = append(out, c)
		}
	}
	return out
}
