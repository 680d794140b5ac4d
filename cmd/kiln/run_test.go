package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/builder"
)

// kiln run's user network is restricted unless --egress; the QEMU options
// only: nothing is booted.
func TestRunEgressOption(t *testing.T) {
	dir := t.TempDir()
	d := &builder.Dir{Path: dir}
	d.Role = node.RoleMaster
	for _, f := range []string{image.KernelFile, image.InitramfsFile, image.CmdlineFile} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		d.Artifacts = append(d.Artifacts, builder.Artifact{Format: image.BootKernel, Path: f})
	}
	for _, egress := range []bool{false, true} {
		f := runFlags{image: dir, boot: image.BootKernel, apiPort: 6443, egress: egress}
		_, net, err := bootOptions(f, d)
		if err != nil {
			t.Fatal(err)
		}
		if net.Egress != egress || len(net.Forwards) != 1 || net.Forwards[0].GuestPort != apiGuestPort {
			t.Errorf("--egress=%t: user network %+v", egress, net)
		}
	}
	code, out, _ := kiln(t, "run", "--help")
	for _, want := range []string{"--egress", "restrict=on", "your LAN", "Default: closed"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("run --help lacks %q:\n%s", want, out)
		}
	}
}
