package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/node"
	"kiln/images/builder"
)

// These tests stop before any socket is opened: "kiln pxe serve" is run
// for real only inside network namespaces (pxe's tests).

func fakePXEImage(t *testing.T, role string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), role)
	os.MkdirAll(filepath.Join(dir, "pxe"), 0o755)
	m := builder.Manifest{ID: "x", Role: node.Role(role), Cmdline: []string{"console=ttyS0"}}
	for _, f := range []string{"pxe/vmlinuz", "pxe/initramfs.img", "pxe/boot.ipxe"} {
		m.Artifacts = append(m.Artifacts, builder.Artifact{Format: "pxe", Path: f})
		os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644)
	}
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestPXEServeErrors(t *testing.T) {
	worker := fakePXEImage(t, "worker")
	machines := filepath.Join(t.TempDir(), "machines.yaml")
	os.WriteFile(machines, []byte("machines:\n  52:54:00:12:34:56: {role: mastr}\n"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"pxe alone", []string{"pxe"}, 2, []string{"kiln pxe needs a sub-command: serve"}},
		{"no interface", []string{"pxe", "serve", "--image", worker}, 2, []string{"--interface is required"}},
		{"bad range", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--dhcp-range", "10.0.0.1"}, 2,
			[]string{`--dhcp-range "10.0.0.1": want START-END`}},
		{"bad range address", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--dhcp-range", "10.0.0.1-10.0.0.x"}, 2,
			[]string{`--dhcp-range "10.0.0.x": want an IPv4 address`}},
		{"reversed range", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--dhcp-range", "10.0.0.9-10.0.0.1"}, 2,
			[]string{"the start is after the end"}},
		{"range and no-dhcp", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--dhcp-range", "10.0.0.1-10.0.0.9", "--no-dhcp"}, 2,
			[]string{"contradict"}},
		{"bad router", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--router", "gw"}, 2,
			[]string{`--router "gw"`}},
		{"bad port", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--http-port", "0"}, 2,
			[]string{"--http-port 0"}},
		{"same ports", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--http-port", "69"}, 2,
			[]string{"both 69"}},
		{"not an image", []string{"pxe", "serve", "-i", "kiln-none0", "--image", t.TempDir()}, 1,
			[]string{"is not a kiln image directory"}},
		{"bad machines", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--machines", machines}, 1,
			[]string{machines + `:2: machines[52:54:00:12:34:56].role: "mastr" is not a role`}},
		{"no such interface", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker}, 1,
			[]string{"interface kiln-none0"}},
		{"argument", []string{"pxe", "serve", "-i", "kiln-none0", "eth0"}, 2, []string{"takes no arguments"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := kiln(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, errOut)
			}
			if out != "" {
				t.Errorf("stdout %q", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
		})
	}
}

func TestPXEServeNoImage(t *testing.T) {
	t.Chdir(t.TempDir())
	code, _, errOut := kiln(t, "pxe", "serve", "-i", "kiln-none0")
	if code != 1 || !strings.Contains(errOut, "no image: out/master and out/worker hold none") {
		t.Errorf("exit %d: %s", code, errOut)
	}
}

func TestPXEHelp(t *testing.T) {
	code, out, _ := kiln(t, "--help")
	if code != 0 || !strings.Contains(out, "kiln pxe serve") {
		t.Errorf("kiln --help does not name pxe serve:\n%s", out)
	}
	code, out, _ = kiln(t, "pxe", "serve", "--help")
	for _, w := range []string{"--interface", "--dhcp-range", "--machines", "--http-port", "--tftp-port", "default: {role: worker}", "SO_BINDTODEVICE"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("pxe serve --help lacks %q", w)
		}
	}
}
