package kmod

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseModuleList(t *testing.T) {
	got := parseModuleList("# virtio\nvirtio_pci\nvirtio-net napi_tx=1 foo=bar # comment\n\n  kernel/fs/ext4/ext4.ko  \n")
	want := []moduleEntry{{Name: "virtio_pci"}, {Name: "virtio_net", Params: "napi_tx=1 foo=bar"}, {Name: "ext4"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v", got)
	}
	if moduleName("kernel/drivers/net/virtio_net.ko.xz") != "virtio_net" {
		t.Error("compressed module name")
	}
}

// Only missing and built-in modules here: the test must not load anything
// into the host's kernel.
func TestLoadModulesWarnings(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("kernel/drivers/net/not-here.ko:\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\n"), 0o644)
	list := filepath.Join(t.TempDir(), "modules")
	os.WriteFile(list, []byte("ext4\nnot_here\nunknown_module\n"), 0o644)
	r, err := Load(list, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Loaded) != 0 || !reflect.DeepEqual(r.Present, []string{"ext4"}) || len(r.Warnings) != 2 {
		t.Fatalf("report %+v", r)
	}
	if !strings.Contains(r.Warnings[0], "not_here") || !strings.Contains(r.Warnings[1], "unknown_module: not in") {
		t.Errorf("warnings %v", r.Warnings)
	}
	if r.String() != "0 loaded, 1 already there, 2 failed" {
		t.Errorf("%q", r.String())
	}
	// No list: nothing to do.
	if r, err := Load(filepath.Join(dir, "none"), dir); err != nil || len(r.Warnings) != 0 {
		t.Errorf("no list: %+v %v", r, err)
	}
	// No index: one warning.
	if r, err := Load(list, filepath.Join(dir, "none")); err != nil || len(r.Warnings) != 1 {
		t.Errorf("no index: %+v %v", r, err)
	}
}
