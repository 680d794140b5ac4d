package supervisor

import (
	"kiln/configs/nodeapi"

	"strings"
	"testing"
)

func TestNewRejectsBadSpecs(t *testing.T) {
	s := func(name string, deps ...string) Spec { return Spec{Name: name, Path: "/bin/true", DependsOn: deps} }
	for _, tc := range []struct {
		what  string
		specs []Spec
		want  string
	}{
		{"duplicate", []Spec{s("a"), s("b"), s("a")}, `"a": duplicate name`},
		{"unknown dependency", []Spec{s("a", "etcd")}, `"a": depends on unknown service "etcd"`},
		{"cycle", []Spec{s("x"), s("a", "c"), s("b", "a"), s("c", "b")}, "dependency cycle: a -> c -> b -> a"},
		{"self", []Spec{s("a", "a")}, "dependency cycle: a -> a"},
		{"empty name", []Spec{s("")}, "service #1: empty name"},
		{"path name", []Spec{s("../etc")}, `name "../etc"`},
		{"no path", []Spec{{Name: "a"}}, `"a": no Path`},
	} {
		_, err := New(Options{}, tc.specs)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to say %q", tc.what, err, tc.want)
		}
	}
}

func TestNewOrdersAndDefaults(t *testing.T) {
	sup, err := New(Options{}, []Spec{
		{Name: "scheduler", Path: "x", DependsOn: []string{"apiserver"}},
		{Name: "apiserver", Path: "x", DependsOn: []string{"etcd", "etcd"}},
		{Name: "etcd", Path: "x"},
		{Name: "other", Path: "x"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range sup.Status().Services {
		names = append(names, s.Name)
		if s.State != nodeapi.StateWaiting {
			t.Errorf("%s is %s before Run", s.Name, s.State)
		}
	}
	if got := strings.Join(names, " "); got != "etcd apiserver scheduler other" {
		t.Errorf("order %q", got)
	}
	o := sup.opts
	if o.BackoffBase != defaultBackoffBase || o.BackoffMax != defaultBackoffMax || o.StableAfter != defaultStableAfter ||
		o.CrashLoopAfter != defaultCrashLoopAfter || o.ProbeInterval != defaultProbeInterval || o.StopTimeout != defaultStopTimeout ||
		o.MaxLogBytes != defaultMaxLogBytes || o.MaxLogFiles != defaultMaxLogFiles {
		t.Errorf("defaults not filled: %+v", o)
	}
	if sv := sup.byName["etcd"]; sv.stopTimeout != defaultStopTimeout || len(sv.dependents) != 1 {
		t.Errorf("etcd: stop timeout %s, dependents %d", sv.stopTimeout, len(sv.dependents))
	}
}
