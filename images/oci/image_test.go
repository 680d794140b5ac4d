package oci

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestWriteIsReproducibleAndReadable(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "hello")
	if err := os.WriteFile(bin, []byte("\x7fELF fake program"), 0o755); err != nil {
		t.Fatal(err)
	}
	im := Image{Ref: "kiln.local/hello:v1", Binary: "hello", Cmd: []string{"serve"}}
	var a, b bytes.Buffer
	if err := im.Write(bin, &a); err != nil {
		t.Fatal(err)
	}
	if err := im.Write(bin, &b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two builds of the same image differ")
	}
	archive := filepath.Join(dir, "hello.tar")
	if err := os.WriteFile(archive, a.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	refs, err := Inspect(archive)
	if err != nil || !slices.Equal(refs, []string{"kiln.local/hello:v1"}) {
		t.Fatalf("Inspect: %v %v", refs, err)
	}
	tag, _ := name.NewTag("kiln.local/hello:v1")
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || !slices.Equal(cf.Config.Entrypoint, []string{"/usr/bin/hello"}) || !slices.Equal(cf.Config.Cmd, []string{"serve"}) {
		t.Fatalf("config: %+v", cf)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers", len(layers))
	}
}

func TestInspectRejectsOtherFiles(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "notes.tar")
	os.WriteFile(bad, []byte("not a tarball"), 0o644)
	if _, err := Inspect(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("want an error naming %s, got %v", bad, err)
	}
}

func TestBuiltinRefsAreValid(t *testing.T) {
	for _, im := range Builtin() {
		if _, err := name.NewTag(im.Ref, name.StrictValidation); err != nil {
			t.Errorf("%s: %v", im.Ref, err)
		}
	}
}
