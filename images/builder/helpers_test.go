package builder

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"kiln/configs/cluster"
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
		// Stand-ins for the worker stack's programs where the builder looks
		// by default (beside the node binary): these tests check what goes
		// where; tests/vm boots the real ones.
		for _, p := range PodPrograms {
			if shared.err = writeFake(filepath.Join(shared.dir, p.Bin), "fake "+p.Bin); shared.err != nil {
				return
			}
		}
		for _, im := range oci.Builtin {
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
		_, kernelErr = kernel.Fetch(ctx, kernel.DefaultCacheDir(), kernel.Cloud)
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

// readInitramfs decompresses and parses a zstd newc archive.
func readInitramfs(t *testing.T, p string) (map[string]cpioEntry, []byte) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	raw, err := io.ReadAll(dec)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpioEntry{}
	off := 0
	hex := func(i int) uint32 {
		v, err := strconv.ParseUint(string(raw[off+6+8*i:off+6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatalf("cpio header at %d: %v", off, err)
		}
		return uint32(v)
	}
	pad := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(raw) || string(raw[off:off+6]) != "070701" {
			t.Fatalf("bad cpio header at %d", off)
		}
		mode, size, rmaj, rmin, namesize := hex(1), hex(6), hex(9), hex(10), hex(11)
		name := string(raw[off+110 : off+110+int(namesize)-1])
		off = pad(off + 110 + int(namesize))
		data := raw[off : off+int(size)]
		off = pad(off + int(size))
		if name == "TRAILER!!!" {
			break
		}
		entries[name] = cpioEntry{name: name, mode: mode, data: data, major: rmaj, minor: rmin}
	}
	return entries, raw
}
