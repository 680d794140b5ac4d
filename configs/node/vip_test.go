package node

import (
	"net/netip"
	"strings"
	"testing"
)

func TestVIP(t *testing.T) {
	head := "apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\n"
	static := "network: {interface: eth0, address: 10.0.0.11/24}\n"
	masters := "controlPlane: {masters: [10.0.0.10, 10.0.0.11, 10.0.0.12], vip: %s}\n"
	for _, doc := range []string{
		"role: master\naddress: 10.0.0.11\n" + static + strings.ReplaceAll(masters, "%s", "10.0.0.5"),
		// DHCP: the network is known at run time only.
		"role: master\naddress: 10.0.0.11\n" + strings.ReplaceAll(masters, "%s", "192.168.7.5"),
		// The default address, before PID 1 has set the network's.
		"role: master\n" + static + strings.ReplaceAll(masters, "%s", "10.0.0.254"),
		// A worker on another network, routed to the masters'.
		"role: worker\nnetwork: {address: 10.9.0.20/24}\n" + strings.ReplaceAll(masters, "%s", "10.0.0.5"),
		"role: master\nnetwork: {address: 10.0.0.1/31}\ncontrolPlane: {vip: 10.0.0.0}\n",
	} {
		cfg, err := Parse([]byte(head + doc))
		if err != nil {
			t.Errorf("%q: %v", doc, err)
			continue
		}
		if a, ok := cfg.VIPAddr(); !ok || a.String() != cfg.ControlPlane.VIP {
			t.Errorf("%q: VIPAddr = %v, %t", doc, a, ok)
		}
	}
	for doc, want := range map[string]string{
		"controlPlane: {vip: fd00::5}":         "not an IPv4 address",
		"controlPlane: {vip: 10.0.0.5/32}":     "not an IPv4 address",
		"controlPlane: {vip: vip.example}":     "not an IPv4 address",
		"controlPlane: {vip: 127.0.0.5}":       "cannot be a virtual IP",
		"controlPlane: {vip: 0.0.0.0}":         "cannot be a virtual IP",
		"controlPlane: {vip: 224.0.0.18}":      "cannot be a virtual IP",
		"controlPlane: {vip: 169.254.0.5}":     "cannot be a virtual IP",
		"controlPlane: {vip: 255.255.255.255}": "cannot be a virtual IP",
		"address: 10.0.0.11\ncontrolPlane: {masters: [10.0.0.10, 10.0.0.11], vip: 10.0.0.10}": "controlPlane.vip: 10.0.0.10 is controlPlane.masters[0]",
		"address: 10.0.0.11\ncontrolPlane: {vip: 10.0.0.11}":                                  "is this node's address",
		static + "controlPlane: {vip: 10.0.0.11}":                                             "is this node's network.address",
		static + "controlPlane: {vip: 10.0.1.5}":                                              "not in this master's network 10.0.0.0/24",
		static + "controlPlane: {vip: 10.0.0.255}":                                            "network or broadcast address of 10.0.0.0/24",
		static + "controlPlane: {vip: 10.0.0.0}":                                              "network or broadcast address",
	} {
		_, err := Parse([]byte(head + "role: master\n" + doc + "\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", doc, err, want)
		}
	}
	if d := Default(); d.ControlPlane.VIP != "" {
		t.Error("the default config has a VIP")
	} else if _, ok := d.VIPAddr(); ok {
		t.Error("VIPAddr of a config without a VIP is ok")
	}
	// kiln cluster's config drives carry it in their layer.
	l := NewLayer(RoleMaster, "m1")
	l.ControlPlane = &ControlPlane{Masters: []string{"10.0.0.10"}, VIP: "10.0.0.5"}
	cfg, err := Overlay(Default(), l.YAML("test"))
	if err != nil || cfg.ControlPlane.VIP != "10.0.0.5" || cfg.ControlPlane.Snapshots.Keep != DefaultSnapshotKeep {
		t.Errorf("layer with a VIP: %+v, %v", cfg.ControlPlane, err)
	}
}

func TestLastAddr(t *testing.T) {
	for p, want := range map[string]string{"10.0.0.0/24": "10.0.0.255", "10.0.0.7/30": "10.0.0.7", "10.1.0.0/16": "10.1.255.255", "0.0.0.0/0": "255.255.255.255"} {
		if got := lastAddr(netip.MustParsePrefix(p)); got.String() != want {
			t.Errorf("lastAddr(%s) = %s, want %s", p, got, want)
		}
	}
}
