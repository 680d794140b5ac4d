package cmdline

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParse(t *testing.T) {
	c := Parse(`BOOT_IMAGE=/vmlinuz console=ttyS0,115200 quiet kiln.config="/etc/kiln/my config.yaml" "kiln.hostname=node 1" kiln.role=worker kiln.role=master empty= -- kiln.x=y` + "\n")
	want := []Param{
		{Key: "BOOT_IMAGE", Value: "/vmlinuz", HasValue: true},
		{Key: "console", Value: "ttyS0,115200", HasValue: true},
		{Key: "quiet"},
		{Key: "kiln.config", Value: "/etc/kiln/my config.yaml", HasValue: true},
		{Key: "kiln.hostname", Value: "node 1", HasValue: true},
		{Key: "kiln.role", Value: "worker", HasValue: true},
		{Key: "kiln.role", Value: "master", HasValue: true},
		{Key: "empty", HasValue: true},
		{Key: "kiln.x", Value: "y", HasValue: true},
	}
	if !reflect.DeepEqual(c.Params, want) {
		t.Fatalf("got  %+v\nwant %+v", c.Params, want)
	}
	if v, ok := c.Get("kiln.role"); !ok || v != "master" {
		t.Errorf("kiln.role = %q %v, want the last one, master", v, ok)
	}
	if v, _ := c.Get("kiln.config"); v != "/etc/kiln/my config.yaml" {
		t.Errorf("kiln.config = %q", v)
	}
	if _, ok := c.Get("kiln.none"); ok {
		t.Error("found a missing key")
	}
	if !c.Has("quiet") || !c.Has("empty") || c.Has("kiln.none") {
		t.Error("Has")
	}
	if got := Parse("  \t\n").Params; len(got) != 0 {
		t.Errorf("blank command line: %v", got)
	}
	if got := Parse(`"quoted"`).Params; !reflect.DeepEqual(got, []Param{{Key: "quoted"}}) {
		t.Errorf("quoted word: %+v", got)
	}
}

func TestRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cmdline")
	os.WriteFile(p, []byte("console=ttyS0 kiln.verbose\n"), 0o444)
	c, err := Read(p)
	if err != nil || !c.Has("kiln.verbose") {
		t.Errorf("Read = %+v, %v", c, err)
	}
	if _, err := Read(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing file read")
	}
}
