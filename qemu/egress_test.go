package qemu

import (
	"strings"
	"testing"
)

// Egress is an explicit UserNet field and the only way to a user network
// without restrict=on: the argument string only, QEMU is never started
// with it (Start refuses it in a test binary: checkEgress).
func TestUserNetEgressArgs(t *testing.T) {
	cfg := Config{Machine: "q35", MemoryMB: 256, CPUs: 1}
	for _, o := range []Option{
		WithUserNet(Forward{HostPort: 6443, GuestPort: 6443}),
		WithUserNetConfig(UserNet{Egress: true, MAC: "52:54:00:98:00:0b",
			Forwards: []Forward{{HostPort: 7443, GuestPort: 6443}}}),
	} {
		if err := o(&cfg); err != nil {
			t.Fatal(err)
		}
	}
	args, err := buildArgs(&cfg, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Join(args, " ")
	for _, want := range []string{
		"-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:6443-:6443 ",
		"-netdev user,id=net1,restrict=off,ipv6=off,hostfwd=tcp:127.0.0.1:7443-:6443 ",
		"-device virtio-net-pci,netdev=net1,mac=52:54:00:98:00:0b",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("args lack %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "restrict=") != 2 {
		t.Errorf("want one restrict= per user netdev:\n%s", s)
	}
	if !cfg.Egress() {
		t.Error("Config.Egress false with an egress user network")
	}
	if err := checkEgress(&cfg, true); err == nil || !strings.Contains(err.Error(), "test binary") {
		t.Errorf("egress in a test binary: %v, want refused", err)
	}
	if err := checkEgress(&cfg, false); err != nil {
		t.Errorf("egress outside tests: %v", err)
	}

	// Without Egress nothing changes: restrict=on, allowed in tests.
	closed := Config{Machine: "q35", MemoryMB: 256, CPUs: 1}
	WithUserNetConfig(UserNet{TFTPRoot: "/srv", BootFile: "boot.ipxe"})(&closed)
	WithSocketNet("127.0.0.1:9000", "52:54:00:00:00:02")(&closed)
	if closed.Egress() || checkEgress(&closed, true) != nil {
		t.Error("a restricted config counted as egress")
	}
	args, err = buildArgs(&closed, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(args, " "); !strings.Contains(s, "-netdev user,id=net0,restrict=on,tftp=") || strings.Contains(s, "restrict=off") {
		t.Errorf("restricted user network:\n%s", s)
	}
}

// Raw arguments cannot open a user network: the guard refuses any user
// netdev, -nic or -net without restrict=on, or with another restrict
// value beside it.
func TestExtraArgsUserNetGuard(t *testing.T) {
	for _, bad := range [][]string{
		{"-nic", "user,model=virtio"},
		{"-netdev", "user,id=x"},
		{"--netdev", "user,id=x,restrict=off"},
		{"-netdev", "user,id=x,restrict=on,restrict=off"},
		{"-netdev", "user,id=x,restrict=no"},
		{"-netdev", "type=user,id=x"},
		{"-net", "user"},
		{"-m", "256", "-nic", "user,norestrict"},
	} {
		if err := checkExtraNet(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, ok := range [][]string{
		{"-netdev", "user,id=x,restrict=on"},
		{"-nic", "user,restrict=on,model=virtio"},
		{"-netdev", "stream,id=s,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=9"},
		{"-device", "virtio-net-pci,netdev=x"},
		{"-append", "user"},
	} {
		if err := checkExtraNet(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
}
