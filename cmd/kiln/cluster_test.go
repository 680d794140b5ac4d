package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/qemu/vmcluster"
)

func TestClusterErrors(t *testing.T) {
	dir := t.TempDir()
	// No cluster directory: say how to get one, start nothing.
	code, _, stderr := kiln(t, "cluster", "up", "--cluster", filepath.Join(dir, "nope"), "--state", filepath.Join(dir, "state"))
	if code != 1 || !strings.Contains(stderr, "make image ROLE=master") {
		t.Errorf("up without a cluster: %d %q", code, stderr)
	}
	// Nothing running: down and status say so.
	for _, sub := range []string{"down", "status"} {
		code, stdout, stderr := kiln(t, "cluster", sub, "--state", filepath.Join(dir, "state"))
		if code != 0 || !strings.Contains(stdout, "no cluster running") {
			t.Errorf("%s with nothing running: %d %q %q", sub, code, stdout, stderr)
		}
	}
	code, _, stderr = kiln(t, "cluster")
	if code != 2 || !strings.Contains(stderr, "down, status, up") {
		t.Errorf("kiln cluster alone: %d %q", code, stderr)
	}
}

func TestClusterUpMissingImages(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := kiln(t, "gen", "cluster", "--out", filepath.Join(dir, "cluster")); code != 0 {
		t.Fatal(stderr)
	}
	_, err := vmcluster.Up(t.Context(), vmcluster.Options{
		MasterImage: filepath.Join(dir, "master"), WorkerImage: filepath.Join(dir, "worker"),
		ClusterDir: filepath.Join(dir, "cluster"), StateDir: filepath.Join(dir, "state"), Workers: 1,
	})
	if err == nil || !strings.Contains(err.Error(), "make image ROLE=master FORMAT=kernel") {
		t.Fatalf("want an error saying how to build the images, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Error("state directory written although nothing can boot")
	}
}

func TestParseNodeList(t *testing.T) {
	list := `{"kind":"NodeList","items":[
	 {"metadata":{"name":"kiln-worker-1"},"status":{"conditions":[{"type":"Ready","status":"False"}],"nodeInfo":{"kubeletVersion":"v1.37.2"}}},
	 {"metadata":{"name":"kiln-master"},"status":{"conditions":[{"type":"MemoryPressure","status":"False"},{"type":"Ready","status":"True"}],"nodeInfo":{"kubeletVersion":"v1.37.2"}}}]}`
	nodes, err := vmcluster.ParseNodeList(strings.NewReader(list))
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[0].Name != "kiln-master" || !nodes[0].Ready || nodes[1].Ready || nodes[1].Version != "v1.37.2" {
		t.Fatalf("%+v", nodes)
	}
}

// --vip auto gives several masters the default VIP and one master none.
func TestClusterVIP(t *testing.T) {
	for _, tc := range []struct {
		flag    string
		masters int
		want    string
	}{
		{"auto", 3, vmcluster.DefaultVIP}, {"auto", 1, ""}, {"none", 3, ""}, {"10.120.0.7", 3, "10.120.0.7"},
	} {
		if got := clusterVIP(tc.flag, tc.masters); got != tc.want {
			t.Errorf("--vip %s with %d masters: %q, want %q", tc.flag, tc.masters, got, tc.want)
		}
	}
}

// --egress is off unless asked, reaches the daemon, and its help says
// what it opens; kiln cluster status says which it is.
func TestClusterEgressFlag(t *testing.T) {
	for _, egress := range []bool{false, true} {
		f := clusterFlags{masters: 1, workers: 1, egress: egress}
		d := clusterDaemonCommand()
		if err := d.Flags().Parse(f.args()); err != nil {
			t.Fatal(err)
		}
		if got, _ := d.Flags().GetBool("egress"); got != egress {
			t.Errorf("daemon's --egress %t, want %t (args %q)", got, egress, f.args())
		}
	}
	up := clusterUpCommand()
	if v, _ := up.Flags().GetBool("egress"); v {
		t.Error("--egress on by default")
	}
	code, out, _ := kiln(t, "cluster", "up", "--help")
	for _, want := range []string{"--egress", "restrict=on", "your LAN", "127.0.0.1", "Default: closed"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("cluster up --help lacks %q:\n%s", want, out)
		}
	}
	if l := egressLine(false); !strings.HasPrefix(l, "egress off") {
		t.Errorf("status without egress: %q", l)
	}
	if l := egressLine(true); !strings.HasPrefix(l, "egress on") {
		t.Errorf("status with egress: %q", l)
	}
}
