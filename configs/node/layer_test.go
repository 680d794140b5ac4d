package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An layer parses back as a valid config and leaves unset keys alone.
func TestLayer(t *testing.T) {
	o := NewLayer(RoleMaster, "kiln-master")
	o.Network = &Network{Interface: "eth0", Address: "10.120.0.10/24", Additional: []Network{{Interface: "eth1", Address: "10.0.2.15/24"}}}
	o.ExtraArgs = map[string]map[string]string{"kube-apiserver": {"bind-address": "0.0.0.0"}}
	data := o.YAML("written by a test")
	if !strings.HasPrefix(string(data), "# written by a test\n") || strings.Contains(string(data), "runPods") {
		t.Fatalf("layer:\n%s", data)
	}
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Role != RoleMaster || c.Hostname != "kiln-master" || c.Network.Additional[0].Interface != "eth1" || c.ExtraArgs["kube-apiserver"]["bind-address"] != "0.0.0.0" {
		t.Errorf("loaded %+v", c)
	}
	if c.RunPods != Default().RunPods {
		t.Errorf("runPods = %v, want the default %v", c.RunPods, Default().RunPods)
	}
}
