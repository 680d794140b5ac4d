package boot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/cluster"
	"kiln/configs/node"
)

// TestServiceRange: the network step asks for a service route on every
// node that runs kube-proxy, with the cluster's range and the node's
// address; not on a control-plane-only master, nor on an image without a
// cluster directory.
func TestServiceRange(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cluster")
	if _, err := cluster.Generate(dir, cluster.Options{Name: "unit", ServiceCIDR: "10.100.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	worker := node.Config{Role: node.RoleWorker, Address: "10.120.0.11"}
	master := node.Config{Role: node.RoleMaster, RunPods: true, Address: "10.120.0.10"}
	cpOnly := node.Config{Role: node.RoleMaster, RunPods: false, Address: "10.120.0.10"}
	for _, tc := range []struct {
		name string
		cfg  node.Config
		dir  string
		want string // "" for none
	}{
		{"worker", worker, dir, "10.100.0.0/16 10.120.0.11"},
		{"master that runs pods", master, dir, "10.100.0.0/16 10.120.0.10"},
		{"control-plane-only master: no kube-proxy", cpOnly, dir, ""},
		{"no cluster directory in the image", worker, filepath.Join(t.TempDir(), "none"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := serviceRange(tc.cfg, tc.dir)
			if err != nil {
				t.Fatal(err)
			}
			s := ""
			if ok {
				s = got.CIDR.String() + " " + got.NodeIP.String()
			}
			if s != tc.want {
				t.Errorf("got %q (ok %v), want %q", s, ok, tc.want)
			}
		})
	}

	// A cluster.yaml that does not load is an error (a warning on the
	// console), not silence.
	bad := filepath.Join(t.TempDir(), "bad")
	os.MkdirAll(bad, 0o700)
	os.WriteFile(filepath.Join(bad, cluster.ConfigFile), []byte("serviceCIDR: nope\n"), 0o600)
	if _, _, err := serviceRange(worker, bad); err == nil || !strings.Contains(err.Error(), cluster.ConfigFile) {
		t.Errorf("a broken cluster.yaml: %v", err)
	}
}
