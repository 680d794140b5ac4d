package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"

	"golang.org/x/sys/unix"

	"kiln/configs/cluster"
	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/kernel"
	"kiln/images/oci"
)

// Shared by the tests of this package: the test init (a tiny static PID 1
// standing in for kiln-node), a cluster directory and the kernel cache.
var (
	shared struct {
		once       sync.Once
		err        error
		dir        string // removed by TestMain
		init       string
		clusterDir string
	}
	kernelOnce sync.Once
	kernelErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// fixtures builds the test init and generates a cluster, once.
func fixtures(t *testing.T) (initBin, clusterDir string) {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "kiln-build-test-")
		if shared.err != nil {
			return
		}
		shared.init = filepath.Join(shared.dir, "testinit")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", shared.init, "./testdata/testinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			shared.err = fmt.Errorf("go build testinit: %v\n%s", err, out)
			return
		}
		// The real stage 1, beside it where Build looks by default.
		cmd = exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(shared.dir, "kiln-init"), "../../cmd/kiln-init")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			shared.err = fmt.Errorf("go build kiln-init: %v\n%s", err, out)
			return
		}
		// Stand-ins for the worker stack's programs where the builder looks
		// by default (beside the node binary): these tests check what goes
		// where; tests/vm boots the real ones.
		for _, p := range podPrograms {
			if shared.err = writeFake(filepath.Join(shared.dir, p.Bin), "fake "+p.Bin); shared.err != nil {
				return
			}
		}
		for _, im := range oci.Builtin() {
			if shared.err = writeFake(filepath.Join(shared.dir, "oci", im.Binary), "fake "+im.Binary); shared.err != nil {
				return
			}
		}
		shared.clusterDir = filepath.Join(shared.dir, "cluster")
		_, shared.err = cluster.Generate(shared.clusterDir, cluster.Options{Name: "buildtest"})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.init, shared.clusterDir
}

func writeFake(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte("#!/bin/false\n"+content+"\n"), 0o755)
}

// needKernel fetches the kernel into the default cache once (a no-op when
// it is there).
func needKernel(t *testing.T) {
	t.Helper()
	kernelOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		start := time.Now()
		_, kernelErr = kernel.Fetch(ctx, kernel.Options{CacheDir: kernel.DefaultCacheDir(), Flavour: kernel.Cloud})
		t.Logf("kernel.Fetch: %v", time.Since(start).Round(time.Millisecond))
	})
	if kernelErr != nil {
		t.Fatalf("fetching the kernel: %v", kernelErr)
	}
}

// testRequest is a request for the test init, into a fresh directory.
func testRequest(t *testing.T, role string, formats ...string) Request {
	initBin, clusterDir := fixtures(t)
	needKernel(t)
	return Request{
		Role:       node.Role(role),
		NodeBinary: initBin,
		ClusterDir: clusterDir,
		OutDir:     filepath.Join(t.TempDir(), role),
		Formats:    formats,
		Progress:   tlogWriter{t},
		DiskSize:   1 << 30,
	}
}

// tlogWriter sends progress lines to t.Log.
type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// cpioEntry is one entry of a newc archive.
type cpioEntry struct {
	name  string
	mode  uint32
	data  []byte
	major uint32 // rdev
	minor uint32
}

// readInitramfs reads a newc archive (zstd-compressed or not) and parses it with
// u-root's cpio reader, a parser independent of kiln's writer. It fails
// the test unless the archive ends with its trailer.
func readInitramfs(t *testing.T, p string) (map[string]cpioEntry, []byte) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.HasPrefix(raw, []byte{0x28, 0xb5, 0x2f, 0xfd}) { // zstd's magic
		dec, err := zstd.NewReader(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		defer dec.Close()
		if raw, err = io.ReadAll(dec); err != nil {
			t.Fatal(err)
		}
	}
	// Newc.Reader ends at the trailer as at the end of the bytes (both
	// io.EOF): read below its EOFReader to tell a whole archive from a
	// truncated one.
	eof, ok := cpio.Newc.Reader(bytes.NewReader(raw)).(cpio.EOFReader)
	if !ok {
		t.Fatalf("u-root's newc reader is not a cpio.EOFReader: update readInitramfs")
	}
	entries := map[string]cpioEntry{}
	for {
		rec, err := eof.RecordReader.ReadRecord()
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s: no %s record: the archive is truncated after %d entries", p, cpio.Trailer, len(entries))
		}
		if err != nil {
			t.Fatalf("%s: after %d entries: %v", p, len(entries), err)
		}
		if rec.Name == cpio.Trailer {
			break
		}
		data, err := io.ReadAll(io.NewSectionReader(rec, 0, int64(rec.FileSize)))
		if err != nil || uint64(len(data)) != rec.FileSize {
			t.Fatalf("%s: %s: %d of %d bytes: %v", p, rec.Name, len(data), rec.FileSize, err)
		}
		if _, dup := entries[rec.Name]; dup {
			t.Errorf("%s: %s twice in the archive", p, rec.Name)
		}
		entries[rec.Name] = cpioEntry{name: rec.Name, mode: uint32(rec.Mode), data: data,
			major: uint32(rec.Rmajor), minor: uint32(rec.Rminor)}
	}
	return entries, raw
}

// readRoot unpacks the root image of an initramfs (image.RootImageFile)
// with squashfs-tools' unsquashfs, a reader independent of kiln's writer,
// and returns its entries as readInitramfs does, and every file's bytes
// one after the other (to search for what must not be there).
func readRoot(t *testing.T, outer map[string]cpioEntry) (map[string]cpioEntry, []byte) {
	t.Helper()
	img, ok := outer[strings.TrimPrefix(image.RootImageFile, "/")]
	if !ok {
		t.Fatalf("the initramfs has no %s", image.RootImageFile)
	}
	dir := t.TempDir()
	sq := filepath.Join(dir, "root.squashfs")
	if err := os.WriteFile(sq, img.data, 0o600); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "root")
	if out, err := exec.Command("unsquashfs", "-no-progress", "-no-xattrs", "-d", tree, sq).CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs: %v\n%s", err, out)
	}
	entries := map[string]cpioEntry{}
	var all []byte
	err := filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == tree {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		name, _ := filepath.Rel(tree, p)
		e := cpioEntry{name: name, mode: st.Mode}
		if d.Type().IsRegular() {
			if e.data, err = os.ReadFile(p); err != nil {
				return err
			}
			all = append(all, e.data...)
		}
		entries[name] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The node's own files of /etc are not in the image (it is the same
	// for every cluster): stage 1 lays them over it from image.EtcDir,
	// as done here.
	for _, p := range image.NodeEtcFiles() {
		if _, ok := entries[strings.TrimPrefix(p, "/")]; ok {
			t.Errorf("the root image holds %s", p)
		}
	}
	etc := strings.TrimPrefix(image.EtcDir, "/") + "/"
	for n, e := range outer {
		if rest, ok := strings.CutPrefix(n, etc); ok {
			e.name = "etc/" + rest
			entries[e.name] = e
			all = append(all, e.data...)
		}
	}
	return entries, all
}
