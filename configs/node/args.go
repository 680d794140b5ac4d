package node

import (
	"fmt"
	"sort"

	"kiln/internal/bounded"
)

// Args merges a component's default flags with the config's extraArgs for
// it and returns a sorted argv ("--name=value"), so the same config always
// gives the same command line. Overrides are returned so the caller can log
// them: a user overriding a default is worth a line on the console.
func (c *Config) Args(component string, defaults map[string]string) (argv []string, overridden []string) {
	merged := make(map[string]string, len(defaults))
	for k, v := range defaults {
		merged[k] = v
	}
	for k, v := range c.ExtraArgs[component] {
		if old, ok := merged[k]; ok && old != v {
			overridden = append(overridden, fmt.Sprintf("--%s=%s (default %s)", bounded.Cut(k), bounded.Cut(v), bounded.Cut(old)))
		}
		if v == "" {
			delete(merged, k)
			continue
		}
		merged[k] = v
	}
	keys := make([]string, 0, len(merged))
	for k := range merged {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		argv = append(argv, "--"+k+"="+merged[k])
	}
	sort.Strings(overridden)
	return argv, overridden
}
