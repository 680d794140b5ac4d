package entry

import (
	"slices"
	"testing"

	"kiln/components"
)

// TestEntriesAreTheComponents: the node binary has an entry point for
// exactly the components the supervisor starts (components.All), tasks
// included. (The serving ones are also the config's extraArgs keys:
// components' own test checks that.)
func TestEntriesAreTheComponents(t *testing.T) {
	var want []string
	for _, c := range components.All() {
		want = append(want, c.Name())
	}
	slices.Sort(want)
	if got := Names(); !slices.Equal(got, want) {
		t.Errorf("entry points %v, components %v: add the missing ones to entries (entry.go) or components.All", got, want)
	}
	for _, n := range want {
		if f, ok := Lookup(n); !ok || f == nil {
			t.Errorf("Lookup(%q) = %v, %v", n, f, ok)
		}
	}
}
