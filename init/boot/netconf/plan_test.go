package netconf

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/rfc1035label"

	"kiln/configs/node"
)

func ack(t *testing.T, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	base := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(10, 0, 2, 15)),
		dhcpv4.WithServerIP(net.IPv4(10, 0, 2, 2)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 2, 2))),
	}
	p, err := dhcpv4.New(append(base, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLeasePlan(t *testing.T) {
	full := ack(t,
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(10, 0, 2, 2)),
		dhcpv4.WithDNS(net.IPv4(10, 0, 2, 3), net.IPv4(1, 1, 1, 1)),
		dhcpv4.WithLeaseTime(3600),
		dhcpv4.WithOption(dhcpv4.OptDomainSearch(&rfc1035label.Labels{Labels: []string{"corp.example", "example"}})),
		dhcpv4.WithOption(dhcpv4.Option{Code: dhcpv4.OptionInterfaceMTU, Value: dhcpv4.OptionGeneric{Data: []byte{0x05, 0xdc}}}),
	)
	p, err := LeasePlan("eth0", full, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Addr != netip.MustParsePrefix("10.0.2.15/24") || p.Gateway != netip.MustParseAddr("10.0.2.2") ||
		len(p.DNS) != 2 || p.MTU != 1500 || p.Lease != time.Hour || p.T1 != 30*time.Minute || p.T2 != 52*time.Minute+30*time.Second ||
		p.Server != netip.MustParseAddr("10.0.2.2") {
		t.Errorf("plan %+v", p)
	}
	want := "eth0 10.0.2.15/24 via 10.0.2.2, dns 10.0.2.3 1.1.1.1, mtu 1500 (dhcp from 10.0.2.2, lease 1h0m0s)"
	if p.String() != want {
		t.Errorf("String %q\nwant   %q", p.String(), want)
	}
	rc := string(p.resolvConf())
	if !strings.Contains(rc, "search corp.example example\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n") {
		t.Errorf("resolv.conf:\n%s", rc)
	}

	// The config's dns replaces the server's.
	p, err = LeasePlan("eth0", full, []string{"9.9.9.9"})
	if err != nil || len(p.DNS) != 1 || p.DNS[0].String() != "9.9.9.9" {
		t.Errorf("dns override: %v %v", err, p.DNS)
	}

	// QEMU's DHCP server with restrict=on: no router, no DNS, no mask
	// beyond the default; explicit T1.
	bare := ack(t, dhcpv4.WithLeaseTime(86400), dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(600*time.Second)))
	p, err = LeasePlan("eth0", bare, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Addr.String() != "10.0.2.15/8" || p.Gateway.IsValid() || len(p.DNS) != 0 || p.T1 != 10*time.Minute {
		t.Errorf("bare plan %+v", p)
	}
	if p.String() != "eth0 10.0.2.15/8 (dhcp from 10.0.2.2, lease 24h0m0s)" {
		t.Errorf("bare String %q", p.String())
	}

	// No address: an error.
	noAddr, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeAck))
	if _, err := LeasePlan("eth0", noAddr, nil); err == nil {
		t.Error("an ACK without yiaddr was accepted")
	}
	// An infinite lease is never renewed.
	inf, _ := LeasePlan("eth0", ack(t, dhcpv4.WithLeaseTime(0xffffffff)), nil)
	if inf.Lease != 0 {
		t.Errorf("infinite lease %v", inf.Lease)
	}
}

func TestRenewDelay(t *testing.T) {
	got := time.Unix(1000, 0)
	p := Plan{Lease: time.Hour, T1: 30 * time.Minute, T2: 52 * time.Minute}
	for _, tc := range []struct {
		at      time.Duration
		wait    time.Duration
		expired bool
	}{
		{0, 30 * time.Minute, false},
		{10 * time.Minute, 20 * time.Minute, false},
		{30 * time.Minute, 15 * time.Minute, false},                // half the time left
		{59*time.Minute + 50*time.Second, 10 * time.Second, false}, // at least 10 s, but not past the end
		{59*time.Minute + 55*time.Second, 5 * time.Second, false},
		{time.Hour, 0, true},
	} {
		wait, expired := renewDelay(p, got, got.Add(tc.at))
		if wait != tc.wait || expired != tc.expired {
			t.Errorf("at %v: %v %v, want %v %v", tc.at, wait, expired, tc.wait, tc.expired)
		}
	}
	if w, e := renewDelay(Plan{}, got, got.Add(time.Hour)); w != 0 || e {
		t.Errorf("infinite: %v %v", w, e)
	}
}

func TestStaticPlan(t *testing.T) {
	f := false
	p, err := StaticPlan("eth1", node.Network{DHCP: &f, Address: "192.168.1.10/24", Gateway: "192.168.1.1", DNS: []string{"192.168.1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.String() != "eth1 192.168.1.10/24 via 192.168.1.1, dns 192.168.1.1 (static)" {
		t.Errorf("%q", p.String())
	}
	if string(p.resolvConf()) != "# written by kiln's PID 1 (eth1)\nnameserver 192.168.1.1\n" {
		t.Errorf("%q", p.resolvConf())
	}
}

func fakeNet(t *testing.T, nics map[string][4]string) string {
	dir := t.TempDir()
	for name, v := range nics { // type, ifindex, address, carrier
		d := filepath.Join(dir, name)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "type"), []byte(v[0]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "ifindex"), []byte(v[1]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "address"), []byte(v[2]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "carrier"), []byte(v[3]+"\n"), 0o644)
		if name != "lo" && !strings.HasPrefix(name, "br") {
			os.Mkdir(filepath.Join(d, "device"), 0o755)
		}
	}
	return dir
}

func TestNICsAndHostname(t *testing.T) {
	dir := fakeNet(t, map[string][4]string{
		"lo":   {"772", "1", "00:00:00:00:00:00", "1"},
		"eth1": {"1", "3", "52:54:00:ab:cd:ef", "1"},
		"eth0": {"1", "2", "52:54:00:12:34:56", "0"},
		"br0":  {"1", "4", "52:54:00:00:00:01", "1"},
	})
	nics := ListNICs(dir)
	if nicNames(nics) != "eth0, eth1" {
		t.Fatalf("nics %s", nicNames(nics))
	}
	if h := DefaultHostname(nics); h != "kiln-123456" {
		t.Errorf("hostname %s", h)
	}
	if h := DefaultHostname(nil); h != "kiln" {
		t.Errorf("hostname without NIC %s", h)
	}
	if c, ok := chooseNIC(nics, node.Network{}); !ok || c.Name != "eth1" {
		t.Errorf("auto: %v %v, want eth1 (the first with a carrier)", c, ok)
	}
	if c, ok := chooseNIC(nics, node.Network{Interface: "eth0"}); !ok || c.Name != "eth0" {
		t.Errorf("named: %v %v", c, ok)
	}
	if _, ok := chooseNIC(nics[:1], node.Network{Interface: "auto"}); ok {
		t.Error("chose a NIC without carrier")
	}
}
