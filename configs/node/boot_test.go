package node

import (
	"reflect"
	"strings"
	"testing"
)

func TestNetworkAndStorage(t *testing.T) {
	cfg, err := Parse([]byte(`
network:
  interface: eth1
  dhcp: false
  address: 192.168.1.10/24
  gateway: 192.168.1.1
  dns: [192.168.1.1, 1.1.1.1]
storage:
  stateDisk: LABEL=kiln-state
  format: never
`))
	if err != nil {
		t.Fatal(err)
	}
	f := false
	want := Network{Interface: "eth1", DHCP: &f, Address: "192.168.1.10/24", Gateway: "192.168.1.1", DNS: []string{"192.168.1.1", "1.1.1.1"}}
	if !reflect.DeepEqual(cfg.Network, want) {
		t.Errorf("network %+v, want %+v", cfg.Network, want)
	}
	if cfg.Network.UsesDHCP() || cfg.Network.AutoInterface() {
		t.Error("static eth1 taken for DHCP or auto")
	}
	if cfg.Storage.Label() != "kiln-state" || cfg.Storage.FormatPolicy() != FormatNever {
		t.Errorf("storage %+v", cfg.Storage)
	}

	def := Default()
	if !def.Network.UsesDHCP() || !def.Network.AutoInterface() || def.Storage.StateDisk != "" || def.Storage.FormatPolicy() != FormatAuto {
		t.Errorf("defaults: %+v %+v", def.Network, def.Storage)
	}
	// An address alone means static.
	cfg, err = Parse([]byte("network:\n  address: 10.0.0.5/8\n"))
	if err != nil || cfg.Network.UsesDHCP() {
		t.Errorf("address alone: %v, dhcp %v", err, cfg.Network.UsesDHCP())
	}
}

func TestNetworkStorageErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"bad interface", "network:\n  interface: eth0/1\n", []string{"network.interface", "auto"}},
		{"long interface", "network:\n  interface: abcdefghijklmnop\n", []string{"network.interface", "15"}},
		{"bad cidr", "network:\n  address: 10.0.0.5\n", []string{"network.address", "prefix length"}},
		{"dhcp and address", "network:\n  dhcp: true\n  address: 10.0.0.5/8\n", []string{"network.address", "dhcp: false"}},
		{"static without address", "network:\n  dhcp: false\n", []string{"network.dhcp", "network.address"}},
		{"gateway with dhcp", "network:\n  gateway: 10.0.0.1\n", []string{"network.gateway", "DHCP"}},
		{"bad gateway", "network:\n  address: 10.0.0.5/8\n  gateway: x\n", []string{"network.gateway", "not an IP"}},
		{"family", "network:\n  address: 10.0.0.5/8\n  gateway: fe80::1\n", []string{"network.gateway", "family"}},
		{"bad dns", "network:\n  dns: [1.1.1]\n", []string{"network.dns[0]", "1.1.1"}},
		{"bad disk", "storage:\n  stateDisk: vda\n", []string{"storage.stateDisk", "/dev/vda", "LABEL=kiln-state"}},
		{"empty label", "storage:\n  stateDisk: LABEL=\n", []string{"storage.stateDisk", "label"}},
		{"bad format", "storage:\n  format: always\n", []string{"storage.format", `"auto"`, `"never"`}},
		{"unknown field", "storage:\n  disk: /dev/vda\n", []string{"line 2", `unknown field "disk"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestOverlay(t *testing.T) {
	base, err := Parse([]byte("role: worker\nhostname: a\nextraArgs:\n  kubelet:\n    v: \"2\"\nnetwork:\n  dns: [1.1.1.1]\n"))
	if err != nil {
		t.Fatal(err)
	}
	before := base.Clone()
	got, err := Overlay(base, []byte("hostname: b\nextraArgs:\n  kubelet:\n    max-pods: \"50\"\nstorage:\n  stateDisk: /dev/vdb\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Role != RoleWorker || got.Hostname != "b" || got.Storage.StateDisk != "/dev/vdb" {
		t.Errorf("overlay: %+v", got)
	}
	if want := map[string]string{"v": "2", "max-pods": "50"}; !reflect.DeepEqual(got.ExtraArgs["kubelet"], want) {
		t.Errorf("extraArgs merged to %v, want %v", got.ExtraArgs["kubelet"], want)
	}
	if !reflect.DeepEqual(base, before) {
		t.Errorf("Overlay changed its base: %+v", base)
	}
	got.Network.DNS[0] = "9.9.9.9"
	if base.Network.DNS[0] != "1.1.1.1" {
		t.Error("Overlay's result shares the base's lists")
	}
	if _, err := Overlay(base, []byte("role: boss\n")); err == nil || !strings.Contains(err.Error(), "role:") {
		t.Errorf("invalid overlay: %v", err)
	}
	same, err := Overlay(base, nil)
	if err != nil || !reflect.DeepEqual(same, base) {
		t.Errorf("empty overlay: %v %+v", err, same)
	}
}

func TestSetsField(t *testing.T) {
	if !SetsField([]byte("role: worker\naddress: 10.0.0.1\n"), "address") {
		t.Error("address not seen")
	}
	if SetsField([]byte("role: worker\nnetwork:\n  address: 10.0.0.1/8\n"), "address") {
		t.Error("network.address taken for address")
	}
	if SetsField([]byte("role: [\n"), "role") || SetsField(nil, "role") {
		t.Error("a broken or empty document sets a field")
	}
}

func TestLoadApplianceGolden(t *testing.T) {
	cfg, err := Load("testdata/appliance.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := false
	want := Default()
	want.Role = RoleWorker
	want.Hostname = "worker-1"
	want.Address = "192.168.10.21"
	want.Network = Network{Interface: "auto", DHCP: &f, Address: "192.168.10.21/24", Gateway: "192.168.10.1", DNS: []string{"192.168.10.1"}}
	want.Storage = Storage{StateDisk: "LABEL=kiln-state", Format: FormatAuto}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got  %+v\nwant %+v", cfg, want)
	}
}
