//go:build conformance

package conformance

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// files lists an image's paths: "path" for a file or directory,
// "path -> target" for a symlink.
func files(t *testing.T, img v1.Image) map[string]bool {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			name := strings.TrimSuffix(h.Name, "/")
			if h.Typeflag == tar.TypeSymlink {
				name += " -> " + h.Linkname
			}
			out[name] = true
		}
		rc.Close()
	}
	return out
}

// The images as the specs use them: busybox's shell and applets, agnhost's
// entrypoint and its second name, without a VM.
func TestImages(t *testing.T) {
	if _, err := os.Stat(hostBusybox); err != nil {
		t.Skipf("%v: make deps installs busybox-static", err)
	}
	bb, err := busyboxImage()
	if err != nil {
		t.Fatal(err)
	}
	fs := files(t, bb)
	for _, want := range []string{"bin/busybox", "bin/sh -> /bin/busybox", "bin/cat -> /bin/busybox", "usr/bin/wget -> /bin/busybox", "tmp", "etc/passwd"} {
		if !fs[want] {
			t.Errorf("busybox image has no %s", want)
		}
	}
	cf, err := bb.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cf.Config.Cmd, " ") != "sh" || cf.Architecture != "amd64" {
		t.Errorf("busybox config: cmd %q, architecture %s", cf.Config.Cmd, cf.Architecture)
	}

	// A stand-in for the agnhost program: the image only carries it.
	bin := filepath.Join(t.TempDir(), "agnhost")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	src := t.TempDir()
	porter := filepath.Join(src, "test/images/agnhost/porter")
	os.MkdirAll(porter, 0o755)
	for _, f := range []string{"localhost.crt", "localhost.key"} {
		os.WriteFile(filepath.Join(porter, f), []byte(f), 0o644)
	}
	ag, err := agnhostImage(bin, src)
	if err != nil {
		t.Fatal(err)
	}
	fs = files(t, ag)
	for _, want := range []string{"agnhost", "agnhost-2 -> agnhost", "uploads", "localhost.crt", "bin/sh -> /bin/busybox"} {
		if !fs[want] {
			t.Errorf("agnhost image has no %s", want)
		}
	}
	if _, err := os.Stat("/usr/bin/curl"); err == nil && !fs["usr/bin/curl"] {
		t.Errorf("agnhost image has no curl")
	}
	if cf, err = ag.ConfigFile(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(cf.Config.Entrypoint, " ") != "/agnhost" || strings.Join(cf.Config.Cmd, " ") != "pause" {
		t.Errorf("agnhost config: entrypoint %q, cmd %q", cf.Config.Entrypoint, cf.Config.Cmd)
	}
	prev, err := withLabel(ag, "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := ag.Digest()
	d2, _ := prev.Digest()
	if d1 == d2 {
		t.Errorf("the labelled agnhost has agnhost's digest %s", d1)
	}
}

// A report as e2e.test writes it: specs its filters left out are not
// counted, a spec that skipped itself is; the report written keeps the
// selected specs only.
func TestReadJUnit(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.xml")
	os.WriteFile(in, []byte(`<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="6" disabled="2" errors="0" failures="1" time="12.5">
  <testsuite name="Kubernetes e2e suite" package="/" tests="6" disabled="0" skipped="3" errors="0" failures="1" time="12.5" timestamp="2026-12-03T10:00:00">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1"></testcase>
    <testcase name="[It] [sig-node] Pods should get a host IP [Conformance]" classname="Kubernetes e2e suite" status="passed" time="5"></testcase>
    <testcase name="[It] [sig-node] Pods should be updated [Conformance]" classname="Kubernetes e2e suite" status="failed" time="6"><failure message="timed out waiting for pod" type="failed">details</failure></testcase>
    <testcase name="[It] [sig-apps] Job should run [Conformance]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped - needs 3 nodes"></skipped></testcase>
    <testcase name="[It] [sig-storage] foo" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-storage] bar" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
  </testsuite>
</testsuites>
`), 0o644)
	out := filepath.Join(dir, "junit.xml")
	r, err := readJUnit(in, out, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Summary(), "conformance: 3 specs run, 1 passed, 1 failed, 1 skipped in 1m30s"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	if got := failureLine(r.Failed[0]); !strings.Contains(got, "should be updated") || !strings.Contains(got, "timed out waiting for pod") {
		t.Errorf("failure line %q", got)
	}
	r2, err := readJUnit(out, filepath.Join(dir, "again.xml"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Run() != 3 || len(r2.Failed) != 1 {
		t.Errorf("the written report reads back as %d run, %d failed", r2.Run(), len(r2.Failed))
	}
	data, _ := os.ReadFile(out)
	if strings.Contains(string(data), "foo") || !strings.Contains(string(data), `tests="3"`) {
		t.Errorf("written report:\n%s", data)
	}
}
