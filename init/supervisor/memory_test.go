package supervisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The Spec's memory settings land in the service's cgroup files, the
// services' protection in the root's memory.low; a cgroup without the
// memory controller (no files) is left alone and nothing is created. A
// temporary directory stands in for the cgroup tree.
func TestCgroupMemory(t *testing.T) {
	root := t.TempDir()
	write := func(rel, v string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(rel string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return "missing"
		}
		return strings.TrimSpace(string(b))
	}
	write("memory.low", "0")
	for _, n := range []string{"etcd", "stale"} {
		write(n+"/memory.low", "12345")
		write(n+"/memory.high", "12345")
	}
	var out strings.Builder
	s, err := New(Options{CgroupRoot: root, Output: &out}, []Spec{
		{Name: "etcd", Path: "/bin/true", MemoryLow: 64 << 20, MemoryHigh: 564 << 20},
		{Name: "bare", Path: "/bin/true", MemoryLow: 32 << 20, MemoryHigh: 48 << 20}, // no controller files
		{Name: "stale", Path: "/bin/true"},                                           // settings from an earlier run
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.setup(); err != nil {
		t.Fatal(err)
	}
	s.teardown()
	for rel, want := range map[string]string{
		"etcd/memory.low":   "67108864",
		"etcd/memory.high":  "591396864",
		"bare/memory.low":   "missing",
		"bare/memory.high":  "missing",
		"stale/memory.low":  "0",
		"stale/memory.high": "max",
		"memory.low":        "100663296", // 64 + 32 MiB
	} {
		if got := read(rel); got != want {
			t.Errorf("%s = %s, want %s", rel, got, want)
		}
	}
	if out.Len() != 0 {
		t.Errorf("missing controller files reported:\n%s", out.String())
	}
}

// A value the kernel refuses is reported, and the node still starts.
func TestCgroupMemoryRefused(t *testing.T) {
	root := t.TempDir()
	// A directory where the file should be: the write fails, not with
	// "does not exist".
	if err := os.MkdirAll(filepath.Join(root, "svc", "memory.high"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	s, err := New(Options{CgroupRoot: root, Output: &out}, []Spec{{Name: "svc", Path: "/bin/true", MemoryHigh: 1 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.setup(); err != nil {
		t.Fatalf("setup failed for a memory setting: %v", err)
	}
	s.teardown()
	if !strings.Contains(out.String(), "svc: memory.high not set") {
		t.Errorf("output %q", out.String())
	}
	if _, err := os.Stat(filepath.Join(root, "memory.low")); !os.IsNotExist(err) {
		t.Errorf("root memory.low written without protection to give: %v", err)
	}
}
