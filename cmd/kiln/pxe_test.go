package main

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln/configs/node"
	"kiln/images/builder"
	"kiln/pxe"
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
	// Without --machines, the secrets key is made in the state directory.
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	worker, master := fakePXEImage(t, "worker"), fakePXEImage(t, "master")
	openKey := filepath.Join(t.TempDir(), "open.key")
	os.WriteFile(openKey, make([]byte, 32), 0o644)
	os.Chmod(openKey, 0o644) // whatever the umask
	shortKey := filepath.Join(t.TempDir(), "short.key")
	os.WriteFile(shortKey, make([]byte, 8), 0o600)
	badSecret := filepath.Join(t.TempDir(), "bad-secret.yaml")
	os.WriteFile(badSecret, []byte("machines:\n  52:54:00:12:34:57:\n    role: worker\n    nodeSecret: hunter2\n"), 0o600)
	machines := filepath.Join(t.TempDir(), "machines.yaml")
	os.WriteFile(machines, []byte("machines:\n  52:54:00:12:34:56: {role: mastr}\n"), 0o644)
	rack := filepath.Join(t.TempDir(), "rack.yaml")
	os.WriteFile(rack, []byte("machines:\n  52:54:00:12:34:56: {role: master}\n  52:54:00:12:34:57: {role: worker}\ndefault: refuse\n"), 0o644)
	multicast := filepath.Join(t.TempDir(), "multicast.yaml")
	os.WriteFile(multicast, []byte("machines:\n  52:54:00:12:34:56: {role: worker}\n  01:00:5e:00:00:01: {role: worker}\n"), 0o644)
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
		{"multicast MAC", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--machines", multicast}, 1,
			[]string{multicast + ":3: machines[01:00:5e:00:00:01]: 01:00:5e:00:00:01 is a multicast address", "give the MAC address of the machine's boot NIC"}},
		// The master image holds every key of the cluster: refused before
		// anything else, unless asked for by name.
		{"master image", []string{"pxe", "serve", "-i", "kiln-none0", "--image", master, "--image", worker, "--machines", rack}, 1,
			[]string{master + " is a master image: it holds every key of the cluster", "--allow-master-image"}},
		{"master image alone", []string{"pxe", "serve", "-i", "kiln-none0", "--image", master}, 1,
			[]string{"is a master image", "--allow-master-image"}},
		{"master image allowed", []string{"pxe", "serve", "-i", "kiln-none0", "--image", master, "--image", worker, "--machines", rack, "--allow-master-image"}, 1,
			[]string{"interface kiln-none0"}},
		{"argument", []string{"pxe", "serve", "-i", "kiln-none0", "eth0"}, 2, []string{"takes no arguments"}},
		// The secrets key: refused if others may read it, or short.
		{"open secrets key", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--secrets-key", openKey}, 1,
			[]string{"secrets key " + openKey + " is open to other users of this host (mode 0644)", "chmod 600 " + openKey}},
		{"short secrets key", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--secrets-key", shortKey}, 1,
			[]string{"secrets key " + shortKey + " holds 8 bytes, want at least 32"}},
		{"secrets key in a missing directory", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--secrets-key", filepath.Join(t.TempDir(), "missing", "x.key")}, 1,
			[]string{"creating the secrets key"}},
		{"bad nodeSecret", []string{"pxe", "serve", "-i", "kiln-none0", "--image", worker, "--machines", badSecret}, 1,
			[]string{badSecret + ":4: machines[52:54:00:12:34:57].nodeSecret: 7 characters; want 16 to 256"}},
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
			if strings.Contains(errOut, "hunter2") {
				t.Errorf("a nodeSecret in stderr: %q", errOut)
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
	for _, w := range []string{"--interface", "--dhcp-range", "--machines", "--http-port", "--tftp-port", "default: {role: worker}", "SO_BINDTODEVICE",
		"--allow-master-image", "every key of the cluster", "403", "--secrets-key", "nodeSecret", "pxe-secrets.key"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("pxe serve --help lacks %q", w)
		}
	}
}

// TestPXESummary: the summary says who gets what, and warns of a master
// initramfs other users of the host can read (an image built before
// images were written 0600).
func TestPXESummary(t *testing.T) {
	master, worker := fakePXEImage(t, "master"), fakePXEImage(t, "worker")
	os.Chmod(filepath.Join(master, "pxe/initramfs.img"), 0o644) // whatever the umask
	rack := filepath.Join(t.TempDir(), "rack.yaml")
	os.WriteFile(rack, []byte("machines:\n  52:54:00:12:34:56: {role: master}\ndefault: refuse\n"), 0o644)
	f := pxeFlags{iface: "lo", images: []string{master, worker}, machines: rack, allowMaster: true,
		leaseTime: time.Hour, httpPort: 8080, tftpPort: 69}
	cfg, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Interface, cfg.ServerIP, cfg.DHCP = "", netip.MustParseAddr("127.0.0.1"), pxe.DHCPOff
	s, err := pxe.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	printPXESummary(&b, s, cfg)
	for _, w := range []string{
		"each gets its own role's kernel and initramfs and its own config; other requests get 403",
		"warning: " + filepath.Join(master, "pxe/initramfs.img") + " holds the cluster's keys and is readable by other users of this host (mode 0644)",
	} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("summary lacks %q:\n%s", w, b.String())
		}
	}
	os.Chmod(filepath.Join(master, "pxe/initramfs.img"), 0o600)
	b.Reset()
	printPXESummary(&b, s, cfg)
	if strings.Contains(b.String(), "warning") {
		t.Errorf("a warning for a 0600 initramfs:\n%s", b.String())
	}
}

// TestPXESecrets: the secrets key is made 0600 next to the machines file
// and kept across starts; the summary names it and warns of a machines
// file with secrets that other users can read, and no secret is printed.
func TestPXESecrets(t *testing.T) {
	worker := fakePXEImage(t, "worker")
	dir := t.TempDir()
	machines := filepath.Join(dir, "machines.yaml")
	const own = "an-entry-secret-of-its-own-0123456789"
	os.WriteFile(machines, []byte("machines:\n  52:54:00:12:34:57: {role: worker, nodeSecret: "+own+"}\n  52:54:00:12:34:58: {role: worker}\ndefault: refuse\n"), 0o644)
	os.Chmod(machines, 0o644)
	f := pxeFlags{iface: "lo", images: []string{worker}, machines: machines, leaseTime: time.Hour, httpPort: 8080, tftpPort: 69}
	summary := func() (string, *pxe.Server) {
		t.Helper()
		cfg, err := f.config()
		if err != nil {
			t.Fatal(err)
		}
		cfg.Interface, cfg.ServerIP, cfg.DHCP = "", netip.MustParseAddr("127.0.0.1"), pxe.DHCPOff
		s, err := pxe.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		printPXESummary(&b, s, cfg)
		return b.String(), s
	}
	out, s := summary()
	key := filepath.Join(dir, pxe.DefaultSecretsKeyFile)
	fi, err := os.Stat(key)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != pxe.SecretsKeySize {
		t.Fatalf("key file: %v %v", fi, err)
	}
	for _, w := range []string{
		"1 given in " + machines + ", the others derived from the MAC address with secrets key " + key,
		"created " + key + ": back it up",
		"warning: " + machines + " holds nodeSecrets and is readable by other users of this host (mode 0644)",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("summary lacks %q:\n%s", w, out)
		}
	}
	m, _ := s.Machines().Lookup(net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x58})
	derived := s.NodeSecret(m)
	if strings.Contains(out, own) || strings.Contains(out, derived) {
		t.Errorf("a secret in the summary:\n%s", out)
	}
	// Again: the same key, the same secrets.
	os.Chmod(machines, 0o600)
	out, s = summary()
	if strings.Contains(out, "created") || strings.Contains(out, "warning") {
		t.Errorf("second start:\n%s", out)
	}
	if s.NodeSecret(m) != derived {
		t.Error("another secret after a restart")
	}
}
