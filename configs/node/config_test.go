package node

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseEmptyIsDefault(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("got %+v, want defaults", cfg)
	}
}

func TestLoadGolden(t *testing.T) {
	cfg, err := Load("testdata/master.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Hostname = "master-0"
	want.Address = "127.0.0.2"
	want.Ports.APIServer = 7443
	want.ExtraArgs = map[string]map[string]string{"kube-apiserver": {"v": "2"}}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string // substrings of the error
	}{
		{"unknown field", "role: master\nrloe: worker\n", []string{"line 2", `unknown field "rloe"`}},
		{"wrong type", "ports:\n  apiServer: lots\n", []string{"line 2", "lots"}},
		{"bad role", "role: boss\n", []string{"role:", `"boss" is not a role (want master or worker)`}},
		{"bad address", "address: 10.0.0\n", []string{"address:", "not an IP"}},
		{"bad port", "ports:\n  apiServer: 70000\n", []string{"ports.apiServer", "70000"}},
		{"duplicate port", "ports:\n  scheduler: 6443\n", []string{"ports.scheduler", "6443", "ports.apiServer"}},
		{"bad kind", "kind: Pod\n", []string{"kind:", "NodeConfig"}},
		{"unknown component", "extraArgs:\n  kube-apiservr:\n    v: \"2\"\n", []string{"kube-apiservr", "not a component"}},
		{"dashed flag", "extraArgs:\n  kube-apiserver:\n    --v: \"2\"\n", []string{"extraArgs.kube-apiserver", "without dashes"}},
		{"bad hostname", "hostname: Master_0\n", []string{"hostname:", "Master_0"}},
		{"not yaml", "role: [master\n", []string{"line"}},
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

func TestLoadNamesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(p, []byte("rloe: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v does not name %s", err, p)
	}
	_, err = Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing file error: %v", err)
	}
}

func TestArgsDeterministicWithOverrides(t *testing.T) {
	cfg := Default()
	cfg.ExtraArgs = map[string]map[string]string{"kube-scheduler": {"v": "4", "profiling": "", "extra": "x"}}
	defaults := map[string]string{"v": "0", "profiling": "false", "bind-address": "127.0.0.1"}
	argv, over := cfg.Args("kube-scheduler", defaults)
	want := []string{"--bind-address=127.0.0.1", "--extra=x", "--v=4"}
	if !reflect.DeepEqual(argv, want) {
		t.Fatalf("argv %v, want %v", argv, want)
	}
	if len(over) != 2 {
		t.Fatalf("overrides %v, want 2 (v and profiling)", over)
	}
	again, _ := cfg.Args("kube-scheduler", defaults)
	if !reflect.DeepEqual(argv, again) {
		t.Fatal("not deterministic")
	}
}

func TestAdditionalInterfaces(t *testing.T) {
	ok := []byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: worker\nnetwork:\n  interface: eth0\n  address: 10.99.0.11/24\n  additional:\n  - interface: eth1\n    address: 10.0.2.15/24\n")
	cfg, err := Parse(ok)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Network.Additional) != 1 || cfg.Network.Additional[0].Address != "10.0.2.15/24" {
		t.Fatalf("additional: %+v", cfg.Network.Additional)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"  additional:\n  - address: 10.0.2.15/24\n", "network.additional[0].interface: an additional interface must be named"},
		{"  additional:\n  - interface: eth0\n    address: 10.0.2.15/24\n", `network.additional[0].interface: "eth0" is already configured by network.interface`},
		{"  additional:\n  - interface: eth1\n", "network.additional[0]: an additional interface needs a static address"},
		{"  additional:\n  - interface: eth1\n    address: nope\n", `network.additional[0].address: "nope" is not an address`},
	} {
		doc := "apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: worker\nnetwork:\n  interface: eth0\n  address: 10.99.0.11/24\n" + tc.yaml
		_, err := Parse([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func TestParseRole(t *testing.T) {
	for in, want := range map[string]Role{"master": RoleMaster, "worker": RoleWorker} {
		if got, err := ParseRole(in); err != nil || got != want {
			t.Errorf("ParseRole(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "Master", "boss", " worker"} {
		if got, err := ParseRole(in); err == nil || got != "" {
			t.Errorf("ParseRole(%q) = %q, %v: want an error", in, got, err)
		}
	}
}

func TestCheckHostname(t *testing.T) {
	for _, ok := range []string{"a", "master-0", "w1", "0", strings.Repeat("a", 63)} {
		if err := CheckHostname(ok); err != nil {
			t.Errorf("CheckHostname(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Master", "-a", "a-", "a_b", "a.b", strings.Repeat("a", 64)} {
		if err := CheckHostname(bad); err == nil || !strings.Contains(err.Error(), "not a valid node name") {
			t.Errorf("CheckHostname(%q) = %v, want an error", bad, err)
		}
	}
}

func TestKnownComponentsIsACopy(t *testing.T) {
	a := KnownComponents()
	a[0] = "changed"
	if KnownComponents()[0] == "changed" {
		t.Fatal("KnownComponents returns the package's own slice")
	}
}

func TestControlPlaneMasters(t *testing.T) {
	cfg, err := Parse([]byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: master\naddress: 10.0.0.11\ncontrolPlane:\n  masters: [10.0.0.10, 10.0.0.11, 10.0.0.12]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.PeerMasters(); len(got) != 2 || got[0] != "10.0.0.10" || got[1] != "10.0.0.12" {
		t.Errorf("PeerMasters = %v", got)
	}
	if cfg.Bootstraps() {
		t.Error("the second master of the list bootstraps")
	}
	cfg.Address = "10.0.0.10"
	if !cfg.Bootstraps() {
		t.Error("the first master of the list does not bootstrap")
	}
	for doc, want := range map[string]string{
		"address: 10.0.0.13\ncontrolPlane: {masters: [10.0.0.10]}":            "this master's address",
		"address: 10.0.0.10\ncontrolPlane: {masters: [10.0.0.10, x]}":         "controlPlane.masters[1]",
		"address: 10.0.0.10\ncontrolPlane: {masters: [10.0.0.10, 10.0.0.10]}": "listed twice",
	} {
		_, err := Parse([]byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: master\n" + doc + "\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", doc, err, want)
		}
	}
}

func TestControlPlaneSnapshots(t *testing.T) {
	head := "apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: master\naddress: 10.0.0.10\n"
	for doc, want := range map[string]Snapshots{
		"":                                     {Interval: Duration(6 * time.Hour), Keep: 5},
		"controlPlane: {masters: [10.0.0.10]}": {Interval: Duration(6 * time.Hour), Keep: 5},
		"controlPlane: {snapshots: {interval: 90m}}":         {Interval: Duration(90 * time.Minute), Keep: 5},
		"controlPlane: {snapshots: {interval: 0}}":           {Keep: 5},
		"controlPlane: {snapshots: {interval: 0s, keep: 1}}": {Keep: 1},
		"controlPlane: {snapshots: {keep: 100}}":             {Interval: Duration(6 * time.Hour), Keep: 100},
		"controlPlane: {snapshots: {interval: null}}":        {Interval: Duration(6 * time.Hour), Keep: 5},
	} {
		cfg, err := Parse([]byte(head + doc + "\n"))
		if err != nil {
			t.Errorf("%q: %v", doc, err)
			continue
		}
		if got := cfg.ControlPlane.Snapshots; got != want {
			t.Errorf("%q: snapshots %+v, want %+v", doc, got, want)
		}
	}
	for doc, want := range map[string]string{
		"controlPlane: {snapshots: {interval: 30s}}":  "controlPlane.snapshots.interval: 30s is shorter than 1m0s; write 0 to turn scheduled snapshots off",
		"controlPlane: {snapshots: {interval: -1h}}":  "controlPlane.snapshots.interval: -1h0m0s is shorter than 1m0s",
		"controlPlane: {snapshots: {interval: 6}}":    `"6" is not a duration: want a number and a unit, such as 6h`,
		"controlPlane: {snapshots: {interval: [1]}}":  "want a duration such as 6h",
		"controlPlane: {snapshots: {keep: 0}}":        "controlPlane.snapshots.keep: 0; want 1 to 100",
		"controlPlane: {snapshots: {keep: 101}}":      "controlPlane.snapshots.keep: 101; want 1 to 100",
		"controlPlane: {snapshots: {every: 6h}}":      `unknown field "every"`,
		"controlPlane: {snapshots: {interval: soon}}": `"soon" is not a duration`,
	} {
		_, err := Parse([]byte(head + doc + "\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", doc, err, want)
		}
	}
	// A layer (kiln cluster's, kiln pxe serve's) that sets the masters
	// writes no snapshots: the image's stay.
	l := NewLayer(RoleMaster, "m1")
	l.ControlPlane = &ControlPlane{Masters: []string{"10.0.0.10"}}
	if y := string(l.YAML("test")); strings.Contains(y, "snapshots") {
		t.Errorf("layer:\n%s\nwants no snapshots", y)
	}
}
