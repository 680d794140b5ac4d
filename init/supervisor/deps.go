package supervisor

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// validate reports every problem with the specs at once (except cycles,
// which startOrder finds), so a broken component list is fixed in one go.
func validate(specs []Spec) error {
	var errs []error
	seen := make(map[string]bool, len(specs))
	for i, sp := range specs {
		if err := checkName(sp.Name); err != nil {
			errs = append(errs, fmt.Errorf("service #%d: %w", i+1, err))
			continue
		}
		if seen[sp.Name] {
			errs = append(errs, fmt.Errorf("service %q: duplicate name", sp.Name))
		}
		seen[sp.Name] = true
		if sp.Path == "" {
			errs = append(errs, fmt.Errorf("service %q: no Path to run", sp.Name))
		}
	}
	for _, sp := range specs {
		for _, d := range sp.DependsOn {
			if !seen[d] {
				errs = append(errs, fmt.Errorf("service %q: depends on unknown service %q", sp.Name, d))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("supervisor: %w", errors.Join(errs...))
	}
	return nil
}

// checkName rejects names that cannot be a log file or cgroup name, or that
// would make the console's "<name> | line" prefix ambiguous.
func checkName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if name == "." || name == ".." || strings.ContainsFunc(name, func(r rune) bool {
		return r == '/' || r == '|' || unicode.IsSpace(r) || !unicode.IsPrint(r)
	}) {
		return fmt.Errorf("name %q: want a plain word (no spaces, '/', '|' or control characters)", name)
	}
	return nil
}

// startOrder returns the specs sorted so that every service comes after its
// dependencies, keeping the given order where dependencies allow it (so the
// status table reads the way the specs were written). The slices inside each
// spec are copied: the caller may reuse its own. A cycle is an error naming
// it, e.g. "a -> b -> a".
func startOrder(specs []Spec) ([]Spec, error) {
	index := make(map[string]int, len(specs))
	for i, sp := range specs {
		index[sp.Name] = i
	}
	if cycle := findCycle(specs, index); cycle != nil {
		return nil, fmt.Errorf("supervisor: dependency cycle: %s", strings.Join(cycle, " -> "))
	}
	placed := make([]bool, len(specs))
	order := make([]Spec, 0, len(specs))
	for len(order) < len(specs) {
		for i, sp := range specs {
			if placed[i] {
				continue
			}
			ok := true
			for _, d := range sp.DependsOn {
				if !placed[index[d]] {
					ok = false
					break
				}
			}
			if ok {
				placed[i] = true
				order = append(order, copySpec(sp))
				break // rescan from the start to keep the given order
			}
		}
	}
	return order, nil
}

// findCycle returns the services of a dependency cycle, the first repeated
// at the end, or nil if there is none.
func findCycle(specs []Spec, index map[string]int) []string {
	const (
		unvisited = iota
		onPath
		done
	)
	mark := make([]int, len(specs))
	var path []string
	var visit func(i int) []string
	visit = func(i int) []string {
		mark[i] = onPath
		path = append(path, specs[i].Name)
		for _, d := range specs[i].DependsOn {
			j := index[d]
			switch mark[j] {
			case onPath:
				for k, n := range path {
					if n == d {
						return append(append([]string(nil), path[k:]...), d)
					}
				}
			case unvisited:
				if c := visit(j); c != nil {
					return c
				}
			}
		}
		path = path[:len(path)-1]
		mark[i] = done
		return nil
	}
	for i := range specs {
		if mark[i] == unvisited {
			if c := visit(i); c != nil {
				return c
			}
		}
	}
	return nil
}

// copySpec copies a spec's slices, dropping repeated dependencies.
func copySpec(sp Spec) Spec {
	sp.Args = append([]string(nil), sp.Args...)
	sp.Env = append([]string(nil), sp.Env...)
	var deps []string
	for _, d := range sp.DependsOn {
		dup := false
		for _, e := range deps {
			dup = dup || e == d
		}
		if !dup {
			deps = append(deps, d)
		}
	}
	sp.DependsOn = deps
	return sp
}
