package node

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// A second document is refused, naming the file and the line; an empty
// one after "---" is no second document.
func TestOneDocumentPerFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "two.yaml")
	os.WriteFile(p, []byte("role: worker\n---\nrole: master\nhostname: other\n"), 0o644)
	_, err := Load(p)
	if err == nil || err.Error() != "config "+p+": line 2: a second YAML document: one document per file (a node config is one document; put all of it in the first)" {
		t.Errorf("two documents: %v", err)
	}
	for _, doc := range []string{"role: worker\n---\n", "---\nrole: worker\n", "role: worker\n...\n", "role: worker\n--- ~\n"} {
		cfg, err := Parse([]byte(doc))
		if err != nil || cfg.Role != RoleWorker {
			t.Errorf("%q: %v %v", doc, cfg.Role, err)
		}
	}
	// An empty first document does not hide a second one.
	if _, err := Parse([]byte("---\n---\nrole: worker\n")); err == nil || !strings.Contains(err.Error(), "one document per file") {
		t.Errorf("empty first document: %v", err)
	}
}

// Null means "no change", at every depth: a later layer's "key:" keeps
// what the earlier layers set.
func TestOverlayNullKeepsBase(t *testing.T) {
	base, err := Parse([]byte("role: worker\nhostname: a\nextraArgs:\n  kubelet:\n    v: \"2\"\n    max-pods: \"50\"\n  kube-proxy:\n    v: \"3\"\nnetwork:\n  dns: [1.1.1.1]\n  dhcp: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, doc string
		check     func(c Config) bool
	}{
		{"extraArgs: null", "extraArgs: null\n", func(c Config) bool { return reflect.DeepEqual(c.ExtraArgs, base.ExtraArgs) }},
		{"extraArgs: (empty)", "extraArgs:\n", func(c Config) bool { return reflect.DeepEqual(c.ExtraArgs, base.ExtraArgs) }},
		{"kubelet: null", "extraArgs:\n  kubelet: null\n", func(c Config) bool { return reflect.DeepEqual(c.ExtraArgs, base.ExtraArgs) }},
		{"kubelet: ~ beside a change", "extraArgs:\n  kubelet: ~\n  kube-proxy:\n    v: \"4\"\n", func(c Config) bool {
			return reflect.DeepEqual(c.ExtraArgs["kubelet"], base.ExtraArgs["kubelet"]) && c.ExtraArgs["kube-proxy"]["v"] == "4"
		}},
		{"a flag: null", "extraArgs:\n  kubelet:\n    v: null\n    node-labels: x=y\n", func(c Config) bool {
			return reflect.DeepEqual(c.ExtraArgs["kubelet"], map[string]string{"v": "2", "max-pods": "50", "node-labels": "x=y"})
		}},
		{"a new component's flag: null", "extraArgs:\n  kube-apiserver:\n    v: null\n", func(c Config) bool {
			_, set := c.ExtraArgs["kube-apiserver"]["v"]
			return !set && reflect.DeepEqual(c.ExtraArgs["kubelet"], base.ExtraArgs["kubelet"])
		}},
		{"a flag: \"\" still removes", "extraArgs:\n  kubelet:\n    v: \"\"\n", func(c Config) bool {
			v, set := c.ExtraArgs["kubelet"]["v"]
			return set && v == ""
		}},
		{"hostname: null", "hostname:\n", func(c Config) bool { return c.Hostname == "a" }},
		{"network.dns: null", "network:\n  dns: null\n  dhcp:\n", func(c Config) bool {
			return reflect.DeepEqual(c.Network.DNS, []string{"1.1.1.1"}) && c.Network.DHCP != nil && *c.Network.DHCP
		}},
		{"network: null", "network: null\n", func(c Config) bool { return reflect.DeepEqual(c.Network, base.Network) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := base.Clone()
			got, err := Overlay(base, []byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(got) {
				t.Errorf("got extraArgs %v, hostname %q, network %+v", got.ExtraArgs, got.Hostname, got.Network)
			}
			if !reflect.DeepEqual(base, before) {
				t.Errorf("Overlay changed its base")
			}
		})
	}
	if SetsField([]byte("address:\n"), "address") || SetsField([]byte("address: null\n"), "address") {
		t.Error("a null address counts as set")
	}
}

// Values from the config are echoed shortened: a 50 MiB hostname is not
// printed back whole.
func TestHugeValuesShortened(t *testing.T) {
	// A config is at most MaxFileSize: a 50 MiB one is refused whole.
	if _, err := Parse([]byte("hostname: " + strings.Repeat("x", 50<<20) + "\n")); err == nil || err.Error() != "larger than 4 MiB, the most kiln reads from such a file" {
		t.Errorf("50 MiB: %.300v", err)
	}
	huge := strings.Repeat("x", 3<<20)
	want := `"` + strings.Repeat("x", 64) + `"… (3145728 bytes)`
	// YAML keys are at most 1024 characters; longer ones are a syntax
	// error.
	key := strings.Repeat("x", 1000)
	wantKey := `"` + strings.Repeat("x", 64) + `"… (1000 bytes)`
	for _, doc := range []string{
		"hostname: " + huge + "\n",
		"role: " + huge + "\n",
		"address: " + huge + "\n",
		"apiEndpoint: " + huge + "\n",
		"network:\n  interface: " + huge + "\n",
		"network:\n  dns: [" + huge + "]\n",
		"storage:\n  stateDisk: " + huge + "\n",
		"extraArgs:\n  " + key + ":\n    v: \"1\"\n",
		key + ": 1\n",
		"extraArgs:\n  kubelet:\n    " + key + ": 1\n    " + key + ": 2\n",
	} {
		_, err := Parse([]byte(doc))
		if err == nil {
			t.Errorf("%.40q: no error", doc)
			continue
		}
		if len(err.Error()) > 400 || (!strings.Contains(err.Error(), want) && !strings.Contains(err.Error(), wantKey)) {
			t.Errorf("%.40q: error of %d bytes: %.300s", doc, len(err.Error()), err)
		}
	}
	c := Config{ExtraArgs: map[string]map[string]string{"kubelet": {"v": huge}}}
	_, over := c.Args("kubelet", map[string]string{"v": "0"})
	if len(over) != 1 || len(over[0]) > 200 {
		t.Errorf("override message of %d bytes", len(over[0]))
	}
}

// Thousands of problems make an error of ten lines and a count.
func TestManyErrorsCapped(t *testing.T) {
	var b strings.Builder
	for i := range 5000 {
		b.WriteString("k" + strings.Repeat("0", 5) + string(rune('a'+i%26)) + strings.Repeat("z", i%7) + string(rune('a'+i/26%26)) + string(rune('a'+i/676)) + ": 1\n")
	}
	_, err := Parse([]byte(b.String()))
	if err == nil || strings.Count(err.Error(), "\n") != maxErrors || !strings.Contains(err.Error(), "… and 4990 more") {
		t.Errorf("error: %.2000v", err)
	}
	var ea strings.Builder
	ea.WriteString("extraArgs:\n")
	for i := range 100 {
		ea.WriteString("  comp" + strings.Repeat("x", i) + ":\n    v: \"1\"\n")
	}
	_, err = Parse([]byte(ea.String()))
	if err == nil || strings.Count(err.Error(), "\n") != maxErrors || !strings.Contains(err.Error(), "… and 90 more") {
		t.Errorf("error: %.2000v", err)
	}
}

// A config file that never ends is refused at the cap.
func TestLoadCapped(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.Symlink("/dev/zero", p); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || err.Error() != "config "+p+": larger than 4 MiB, the most kiln reads from such a file" {
		t.Errorf("/dev/zero: %v", err)
	}
}

// Parse and Overlay never panic, whatever the bytes; a config they accept
// is valid, and their errors stay short.
func FuzzOverlay(f *testing.F) {
	for _, s := range []string{
		"", "role: worker\n", "---\n---\nrole: worker\n", "extraArgs: {kubelet: null}\n", "extraArgs:\n  kubelet:\n    v: ~\n",
		"network:\n  additional:\n  - interface: eth1\n    address: 10.0.0.1/8\n", "&a [*a, *a]\n", "role: !!binary aGVsbG8=\n",
		"ports: {apiServer: 1e3}\n", "storage:\n  stateDisk: LABEL=\n", "hostname: \"\\xff\"\n", "? [a]\n: b\n",
	} {
		f.Add([]byte(s))
	}
	base, err := Parse([]byte("role: worker\nextraArgs:\n  kubelet:\n    v: \"2\"\nnetwork:\n  dns: [1.1.1.1]\n"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, b := range []Config{Default(), base} {
			cfg, err := Overlay(b, data)
			if err != nil {
				if len(err.Error()) > 4096 {
					t.Errorf("error of %d bytes", len(err.Error()))
				}
				continue
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("accepted an invalid config: %v", err)
			}
		}
	})
}
