package vmcluster

import (
	"reflect"
	"strings"
	"testing"

	"kiln/configs/node"
	"kiln/qemu"
)

// Options.Registries goes into every node's config layer, which reads
// back as a valid config and merges over an image's own registries;
// Options.GuestForwards go onto the masters' user network only.
func TestNodeConfigRegistries(t *testing.T) {
	no := false
	reg := &node.Registries{
		Mirrors: map[string]node.Mirror{"registry.kiln.test": {Endpoints: []string{"https://10.0.2.100:5000"}, Upstream: &no}},
		Configs: map[string]node.RegistryConfig{"10.0.2.100:5000": {
			Auth: &node.RegistryAuth{Username: "kiln", Password: "pw-not-printed"},
			TLS:  &node.RegistryTLS{CAFile: "/etc/kiln/registry-ca.pem"},
		}},
	}
	fwd := []qemu.GuestForward{{GuestAddr: "10.0.2.100", GuestPort: 5000, Command: []string{"/bin/true"}}}
	c := &Cluster{opts: Options{Masters: 1, Workers: 1, Registries: reg, GuestForwards: fwd}}
	master := &Node{Name: MasterName, Role: node.RoleMaster, Address: "10.120.0.10", MAC: "52:54:00:99:00:0a", NodeAPIPort: 40000}
	worker := &Node{Name: "kiln-worker-1", Role: node.RoleWorker, Address: "10.120.0.11", MAC: "52:54:00:99:00:0b", secret: "0123456789abcdef0123456789abcdef"}
	c.Nodes = []*Node{master, worker}

	// The image's embedded config has a registry of its own: the layer
	// adds to it.
	image, err := node.Parse([]byte("registries:\n  mirrors:\n    docker.io: {endpoints: [https://mirror.example.com]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		data := c.nodeConfig(n)
		if !strings.Contains(string(data), "\nregistries:\n") {
			t.Errorf("%s: no registries in its layer:\n%s", n.Name, data)
		}
		cfg, err := node.Parse(data)
		if err != nil {
			t.Fatalf("%s: the layer does not parse: %v\n%s", n.Name, err, data)
		}
		if !reflect.DeepEqual(cfg.Registries, *reg) {
			t.Errorf("%s: layer's registries %+v, want %+v", n.Name, cfg.Registries, *reg)
		}
		merged, err := node.Overlay(image, data)
		if err != nil {
			t.Fatalf("%s: over the image's config: %v", n.Name, err)
		}
		if len(merged.Registries.Mirrors) != 2 || merged.Registries.Mirrors["docker.io"].Endpoints[0] != "https://mirror.example.com" ||
			!reflect.DeepEqual(merged.Registries.Configs, reg.Configs) {
			t.Errorf("%s: over the image's config: %+v", n.Name, merged.Registries)
		}
	}

	// Without the option the layer says nothing of registries.
	c.opts.Registries = nil
	for _, n := range c.Nodes {
		if data := c.nodeConfig(n); strings.Contains(string(data), "registries") {
			t.Errorf("%s: registries without Options.Registries:\n%s", n.Name, data)
		}
	}

	// A master's eth1: the API and node API forwards, and the guest
	// forwards, which QEMU's options accept.
	u := c.userNet(master, 0)
	if !reflect.DeepEqual(u.GuestForwards, fwd) || len(u.Forwards) != 2 || u.Forwards[1].HostPort != master.NodeAPIPort {
		t.Errorf("master's user network: %+v", u)
	}
	var qc qemu.Config
	if err := qemu.WithUserNetConfig(u)(&qc); err != nil {
		t.Error(err)
	}
}
