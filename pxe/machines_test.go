package pxe

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/node"
)

const machinesYAML = `# three machines and a default
machines:
  52:54:00:12:34:56:
    role: master
    hostname: master-1
    address: 10.0.0.10/24
    gateway: 10.0.0.1
  "52-54-00-00-00-02": {role: worker, hostname: worker-1}
  525400000003:
    role: worker
default:
  role: worker
`

func TestParseMachines(t *testing.T) {
	ms := mustMachines(t, machinesYAML)
	if len(ms.List) != 3 || ms.DefaultRole != node.RoleWorker {
		t.Fatalf("%d machines, default %q", len(ms.List), ms.DefaultRole)
	}
	m, ok := ms.Lookup(mac(t, "52:54:00:12:34:56"))
	if !ok || m.Role != node.RoleMaster || m.Hostname != "master-1" || m.Default ||
		m.Address != netip.MustParsePrefix("10.0.0.10/24") || m.Gateway != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("master: %+v", m)
	}
	if m, ok := ms.Lookup(mac(t, "52:54:00:00:00:02")); !ok || m.Hostname != "worker-1" || m.Address.IsValid() {
		t.Errorf("worker-1: %+v", m)
	}
	// No hostname: <role>-<mac>.
	if m, ok := ms.Lookup(mac(t, "52:54:00:00:00:03")); !ok || m.Hostname != "worker-525400000003" || m.Default {
		t.Errorf("unnamed: %+v", m)
	}
	// Unlisted: the default.
	if m, ok := ms.Lookup(mac(t, "AA:BB:CC:00:00:01")); !ok || m.Role != node.RoleWorker || !m.Default || m.Hostname != "worker-aabbcc000001" {
		t.Errorf("default: %+v", m)
	}
	if got := ms.Roles(); len(got) != 2 || got[0] != node.RoleMaster || got[1] != node.RoleWorker {
		t.Errorf("roles %v", got)
	}

	refuse := mustMachines(t, "machines:\n  52:54:00:12:34:56: {role: worker}\ndefault: refuse\n")
	if _, ok := refuse.Lookup(mac(t, "52:54:00:12:34:57")); ok {
		t.Error("an unknown machine is not refused")
	}
	if _, ok := refuse.Lookup(mac(t, "52:54:00:12:34:56")); !ok {
		t.Error("a listed machine is refused")
	}
	// Without a default key, unknown machines are refused too.
	if _, ok := mustMachines(t, "machines:\n  52:54:00:12:34:56: {role: worker}\n").Lookup(mac(t, "52:54:00:12:34:57")); ok {
		t.Error("no default: an unknown machine is not refused")
	}
	if m, ok := mustMachines(t, "default: {role: worker}\n").Lookup(mac(t, "02:00:00:00:00:01")); !ok || m.Role != node.RoleWorker {
		t.Errorf("default only: %+v", m)
	}
	// No network card has a multicast or broadcast address: the default
	// does not apply to one.
	for _, m := range []string{"01:00:5e:00:00:01", "33:33:00:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"} {
		if got, ok := ms.Lookup(mac(t, m)); ok {
			t.Errorf("%s: booted by default as %+v", m, got)
		}
	}
	// A master is never a default: one built by hand refuses too.
	if m, ok := DefaultMachines(node.RoleMaster).Lookup(mac(t, "02:00:00:00:00:01")); ok {
		t.Errorf("a master by default: %+v", m)
	}
}

func TestLoadMachines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "machines.yaml")
	os.WriteFile(p, []byte(machinesYAML), 0o644)
	if ms, err := LoadMachines(p); err != nil || ms.Source != p {
		t.Errorf("%v", err)
	}
	if _, err := LoadMachines(p + ".missing"); err == nil || !strings.Contains(err.Error(), "machines.yaml.missing") {
		t.Errorf("missing file: %v", err)
	}
	os.WriteFile(p, []byte("machines:\n  nope: {role: worker}\n"), 0o644)
	if _, err := LoadMachines(p); err == nil || !strings.HasPrefix(err.Error(), p+":2: ") {
		t.Errorf("error does not name the file and line: %v", err)
	}
}

func TestParseMachinesErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		{"empty", "", []string{"machines.yaml: empty"}},
		{"syntax", "machines: [\n", []string{"machines.yaml: "}},
		{"not a mapping", "- a\n- b\n", []string{"machines.yaml:1: top level"}},
		{"unknown top field", "machine:\n  52:54:00:12:34:56: {role: worker}\ndefault: refuse\n",
			[]string{`machines.yaml:1: machine: unknown field (want "machines" or "default")`}},
		{"nothing", "machines:\ndefault: refuse\n", nil},
		{"no machine no default", "machines:\n", []string{"every machine would be refused"}},
		{"bad MAC", "machines:\n  52:54:00:12:34: {role: worker}\n",
			[]string{`machines.yaml:2: machines[52:54:00:12:34]: "52:54:00:12:34" is not an Ethernet MAC address`}},
		{"duplicate MAC", "machines:\n  52:54:00:12:34:56: {role: worker}\n  52-54-00-12-34-56: {role: master}\n",
			[]string{"machines.yaml:3: machines[52-54-00-12-34-56]: MAC address 52:54:00:12:34:56 is listed twice"}},
		{"bad role", "machines:\n  52:54:00:12:34:56:\n    role: mastr\n",
			[]string{`machines.yaml:3: machines[52:54:00:12:34:56].role: "mastr" is not a role (want master or worker)`}},
		{"no role", "machines:\n  52:54:00:12:34:56: {hostname: a}\n",
			[]string{"machines[52:54:00:12:34:56].role: missing"}},
		{"null entry", "machines:\n  52:54:00:12:34:56:\n",
			[]string{"machines[52:54:00:12:34:56]: want a mapping"}},
		{"unknown field", "machines:\n  52:54:00:12:34:56: {role: worker, ip: 10.0.0.1}\n",
			[]string{"machines[52:54:00:12:34:56].ip: unknown field (want role, hostname, address, gateway or nodeSecret)"}},
		{"bad hostname", "machines:\n  52:54:00:12:34:56: {role: worker, hostname: Worker_1}\n",
			[]string{`machines[52:54:00:12:34:56].hostname: "Worker_1" is not a valid node name`}},
		{"duplicate hostname", "machines:\n  52:54:00:12:34:56: {role: worker, hostname: w}\n  52:54:00:12:34:57: {role: worker, hostname: w}\n",
			[]string{`machines.yaml:3: machines[52:54:00:12:34:57].hostname: "w" is also the name of 52:54:00:12:34:56`}},
		{"address without prefix", "machines:\n  52:54:00:12:34:56: {role: worker, address: 10.0.0.5}\n",
			[]string{`machines[52:54:00:12:34:56].address: "10.0.0.5" is not an IPv4 address with a prefix length`}},
		{"IPv6 address", "machines:\n  52:54:00:12:34:56: {role: worker, address: 'fd00::5/64'}\n",
			[]string{`"fd00::5/64" is not an IPv4 address`}},
		{"network address", "machines:\n  52:54:00:12:34:56: {role: worker, address: 10.0.0.0/24}\n",
			[]string{"is the network's or the broadcast address"}},
		{"duplicate address", "machines:\n  52:54:00:12:34:56: {role: worker, address: 10.0.0.5/24}\n  52:54:00:12:34:57: {role: worker, address: 10.0.0.5/24}\n",
			[]string{"machines[52:54:00:12:34:57].address: 10.0.0.5 is also the address of 52:54:00:12:34:56"}},
		{"gateway without address", "machines:\n  52:54:00:12:34:56: {role: worker, gateway: 10.0.0.1}\n",
			[]string{"machines[52:54:00:12:34:56].gateway: set without address"}},
		{"gateway elsewhere", "machines:\n  52:54:00:12:34:56: {role: worker, address: 10.0.0.5/24, gateway: 10.0.1.1}\n",
			[]string{"machines[52:54:00:12:34:56].gateway: 10.0.1.1 is not in 10.0.0.5's network 10.0.0.0/24"}},
		{"list value", "machines:\n  52:54:00:12:34:56: {role: [worker]}\n",
			[]string{"machines[52:54:00:12:34:56].role: want a single value"}},
		{"bad default", "default: maybe\n",
			[]string{`machines.yaml:1: default: "maybe": want "refuse" or a mapping such as {role: worker}`}},
		{"default role", "default: {role: boss}\n",
			[]string{`machines.yaml:1: default.role: "boss" is not a role`}},
		{"default hostname", "default: {role: worker, hostname: w}\n",
			[]string{`default.hostname: unknown field`}},
		{"default master", "machines:\n  52:54:00:12:34:56: {role: master}\ndefault:\n  role: master\n",
			[]string{"machines.yaml:4: default.role: master: unknown machines never get the master image", "list each master by its MAC address"}},
		{"multicast MAC", "machines:\n  52:54:00:12:34:56: {role: master}\n  01:00:5e:00:00:01: {role: worker}\n",
			[]string{"machines.yaml:3: machines[01:00:5e:00:00:01]: 01:00:5e:00:00:01 is a multicast address", "give the MAC address of the machine's boot NIC"}},
		{"IPv6 multicast MAC", "machines:\n  33-33-00-00-00-01: {role: worker}\n",
			[]string{"machines.yaml:2: machines[33-33-00-00-00-01]: 33:33:00:00:00:01 is a multicast address"}},
		{"broadcast MAC", "machines:\n  ff:ff:ff:ff:ff:ff: {role: worker}\n",
			[]string{"machines.yaml:2: machines[ff:ff:ff:ff:ff:ff]: ff:ff:ff:ff:ff:ff is the broadcast address"}},
		{"zero MAC", "machines:\n  '000000000000': {role: worker}\n",
			[]string{"machines.yaml:2: machines[000000000000]: 00:00:00:00:00:00 is not a network card's address"}},
		{"two errors", "machines:\n  52:54:00:12:34:56: {role: x}\n  bad: {role: worker}\n",
			[]string{"machines.yaml:2: ", "machines.yaml:3: "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMachines("machines.yaml", []byte(tc.text))
			if tc.want == nil {
				if err != nil {
					t.Errorf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestParseMAC(t *testing.T) {
	for _, s := range []string{"52:54:00:ab:cd:ef", "52-54-00-AB-CD-EF", "5254.00ab.cdef", "525400ABCDEF", " 52:54:00:ab:cd:ef "} {
		m, err := ParseMAC(s)
		if err != nil || m.String() != "52:54:00:ab:cd:ef" {
			t.Errorf("ParseMAC(%q) = %v, %v", s, m, err)
		}
	}
	for _, s := range []string{"", "52:54:00:ab:cd", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", "zz:54:00:ab:cd:ef", "52540"} {
		if m, err := ParseMAC(s); err == nil {
			t.Errorf("ParseMAC(%q) = %v, want an error", s, m)
		}
	}
}

func TestConfigYAML(t *testing.T) {
	ms := mustMachines(t, machinesYAML)
	master, _ := ms.Lookup(mac(t, "52:54:00:12:34:56"))
	doc := master.ConfigYAML(netip.MustParseAddr("10.0.0.254"), []netip.Addr{netip.MustParseAddr("10.0.0.53")})
	cfg, err := node.Parse(doc)
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	if cfg.Role != node.RoleMaster || cfg.Hostname != "master-1" || cfg.Address != "10.0.0.10" ||
		cfg.Network.UsesDHCP() || cfg.Network.Address != "10.0.0.10/24" || cfg.Network.Gateway != "10.0.0.1" ||
		len(cfg.Network.DNS) != 1 || cfg.Network.DNS[0] != "10.0.0.53" {
		t.Errorf("master config %+v\n%s", cfg, doc)
	}
	// A DHCP machine's config has no address, and stacks over an
	// image's config without touching its other fields.
	w, _ := ms.Lookup(mac(t, "52:54:00:00:00:02"))
	doc = w.ConfigYAML(netip.MustParseAddr("10.0.0.1"), nil)
	base := node.Default()
	base.Role = node.RoleWorker
	base.Address = "127.0.0.1"
	base.ExtraArgs = map[string]map[string]string{"kubelet": {"v": "2"}}
	cfg, err = node.Overlay(base, doc)
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	if cfg.Hostname != "worker-1" || !cfg.Network.UsesDHCP() || cfg.ExtraArgs["kubelet"]["v"] != "2" || node.SetsField(doc, "address") {
		t.Errorf("worker config %+v\n%s", cfg, doc)
	}
	if !strings.HasPrefix(string(doc), "# kiln pxe: node config of 52:54:00:00:00:02") {
		t.Errorf("doc %s", doc)
	}
	// The server's router is the gateway of a static machine without
	// one, when it is in its network.
	m := Machine{MAC: mac(t, "02:00:00:00:00:01"), Role: node.RoleWorker, Hostname: "w", Address: netip.MustParsePrefix("10.0.0.20/24")}
	if cfg, _ := node.Parse(m.ConfigYAML(netip.MustParseAddr("10.0.0.1"), nil)); cfg.Network.Gateway != "10.0.0.1" {
		t.Errorf("gateway %q", cfg.Network.Gateway)
	}
	if cfg, _ := node.Parse(m.ConfigYAML(netip.MustParseAddr("192.168.0.1"), nil)); cfg.Network.Gateway != "" {
		t.Errorf("gateway outside the network: %q", cfg.Network.Gateway)
	}
}
