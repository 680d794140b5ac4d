package entry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeArchive writes a tar like an image archive: a small manifest.json
// and a large layer.
func writeArchive(t *testing.T, path, manifest string, layer []byte) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct {
		name string
		data []byte
	}{{"manifest.json", []byte(manifest)}, {"blobs/sha256/layer", layer}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeContainerd imports an archive as one image named after it, its
// digest the archive's hash.
type fakeContainerd struct {
	images  map[string]fakeImage
	imports []string
}

type fakeImage struct {
	digest           string
	pinned, unpacked bool
}

func (f *fakeContainerd) importArchive(_ context.Context, path string) ([]importedImage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	name := "kiln.local/" + strings.TrimSuffix(filepath.Base(path), ".tar") + ":v1"
	d := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	f.images[name] = fakeImage{digest: d, pinned: true, unpacked: true}
	f.imports = append(f.imports, filepath.Base(path))
	return []importedImage{{Name: name, Digest: d}}, nil
}

func (f *fakeContainerd) missing(_ context.Context, img importedImage) string {
	got, ok := f.images[img.Name]
	switch {
	case !ok:
		return img.Name + " is not in containerd"
	case got.digest != img.Digest:
		return img.Name + " is another image"
	case !got.pinned:
		return img.Name + " is not pinned"
	case !got.unpacked:
		return img.Name + " is not unpacked"
	}
	return ""
}

// On a node whose containerd keeps its content (a state disk), an archive
// is imported again only when it changed or its images are no longer in
// containerd as imported.
func TestImportSkipsWhatContainerdHas(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	record := filepath.Join(state, "imported.json")
	layer := bytes.Repeat([]byte("x"), 3<<20)
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	writeArchive(t, a, `[{"Config":"sha256:aaaa"}]`, layer)
	writeArchive(t, b, `[{"Config":"sha256:bbbb"}]`, layer)
	archives := []string{a, b}
	ctr := &fakeContainerd{images: map[string]fakeImage{}}
	run := func(record string, want ...string) string {
		t.Helper()
		ctr.imports = nil
		var out bytes.Buffer
		if err := importAll(context.Background(), ctr, archives, record, &out); err != nil {
			t.Fatal(err)
		}
		if strings.Join(ctr.imports, " ") != strings.Join(want, " ") {
			t.Errorf("imported %v, want %v\n%s", ctr.imports, want, out.String())
		}
		summary := fmt.Sprintf("import-images: %d imported, %d skipped", len(want), len(archives)-len(want))
		if !strings.Contains(out.String(), summary) {
			t.Errorf("no %q in\n%s", summary, out.String())
		}
		return out.String()
	}

	run(record, "a.tar", "b.tar") // the first boot
	if _, err := os.Stat(record); err != nil {
		t.Fatal(err)
	}
	if out := run(record); !strings.Contains(out, "skipped (in containerd since an earlier start: a.tar, b.tar)") {
		t.Errorf("second boot:\n%s", out)
	}

	// A rebuilt image: same size, another manifest.
	writeArchive(t, b, `[{"Config":"sha256:cccc"}]`, layer)
	run(record, "b.tar")
	run(record)

	for what, change := range map[string]func(){
		"not in containerd": func() { delete(ctr.images, "kiln.local/a:v1") },
		"another image":     func() { ctr.images["kiln.local/a:v1"] = fakeImage{digest: "sha256:00", pinned: true, unpacked: true} },
		"not pinned":        func() { i := ctr.images["kiln.local/a:v1"]; i.pinned = false; ctr.images["kiln.local/a:v1"] = i },
		"not unpacked":      func() { i := ctr.images["kiln.local/a:v1"]; i.unpacked = false; ctr.images["kiln.local/a:v1"] = i },
	} {
		change()
		if out := run(record, "a.tar"); !strings.Contains(out, "import-images: a.tar: imported again: kiln.local/a:v1 is "+what) {
			t.Errorf("%s: %s", what, out)
		}
		run(record)
	}

	// Without a record (no state disk to keep it), every archive at every start.
	if out := run("", "a.tar", "b.tar"); !strings.Contains(out, "no --record") {
		t.Errorf("without a record:\n%s", out)
	}

	// An unreadable record: every archive, and the record written anew.
	os.WriteFile(record, []byte("{not json"), 0o644)
	if out := run(record, "a.tar", "b.tar"); !strings.Contains(out, "unreadable") {
		t.Errorf("unreadable record:\n%s", out)
	}
	run(record)

	// An archive no longer in the image leaves the record.
	archives = []string{b}
	run(record)
	rec, err := loadImportRecord(record)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rec.Archives["a.tar"]; ok || len(rec.Archives) != 1 {
		t.Errorf("record %+v, want b.tar only", rec)
	}
}

func TestArchiveFingerprint(t *testing.T) {
	dir := t.TempDir()
	fp := func(path string) string {
		t.Helper()
		s, err := archiveFingerprint(path)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	layer := bytes.Repeat([]byte("y"), 2<<20)
	p1, p2, p3 := filepath.Join(dir, "1.tar"), filepath.Join(dir, "2.tar"), filepath.Join(dir, "3.tar")
	writeArchive(t, p1, `{"a":1}`, layer)
	writeArchive(t, p2, `{"a":1}`, layer)
	writeArchive(t, p3, `{"a":2}`, layer)
	if fp(p1) != fp(p2) {
		t.Error("the same content, two fingerprints")
	}
	if fp(p1) == fp(p3) {
		t.Error("another manifest of the same size, the same fingerprint")
	}
	small := bytes.Repeat([]byte("y"), 1000)
	writeArchive(t, p2, `{"a":1}`, small)
	small[500] = 'z'
	writeArchive(t, p3, `{"a":1}`, small)
	if fp(p2) == fp(p3) {
		t.Error("a small entry's content is not in the fingerprint")
	}

	// A compressed archive is hashed whole.
	gz := func(path string, b byte) {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		data := bytes.Repeat([]byte("w"), 1<<20)
		data[1000] = b
		zw.Write(data)
		zw.Close()
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gz(p1, 'a')
	gz(p2, 'b')
	if fp(p1) == fp(p2) {
		t.Error("two compressed archives, the same fingerprint")
	}
}
