package cmdline

import (
	"strings"
	"testing"
)

// Parse never panics, and never makes a key with white space outside
// quotes.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "a=b c", `"a=b c" d`, `a="b c"`, `"`, `a="`, `""=`, "--", "a -- b", "=\x00\xff", `k="v"x`, `"k"="v"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := Parse(s)
		for _, p := range c.Params {
			if strings.ContainsAny(p.Key, " \t\n") && !strings.Contains(s, `"`) {
				t.Errorf("key %q from %q", p.Key, s)
			}
			c.Get(p.Key)
			c.Has(p.Key)
		}
	})
}
