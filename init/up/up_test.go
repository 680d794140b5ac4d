package up

import (
	"reflect"
	"strings"
	"testing"

	"kiln/components"
	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/init/supervisor"
)

func TestCheckAddressRanges(t *testing.T) {
	cl := &cluster.Cluster{Dir: "/c", ServiceCIDR: "10.96.0.0/12", PodCIDR: "10.244.0.0/16"}
	for addr, want := range map[string]string{
		"10.120.0.10":  "",
		"127.0.0.2":    "",
		"10.99.0.10":   "inside the cluster's serviceCIDR 10.96.0.0/12",
		"10.244.3.4":   "inside the cluster's podCIDR 10.244.0.0/16",
		"not-an-addr!": "",
	} {
		err := checkAddressRanges(addr, cl)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: %v, want %q", addr, err, want)
		}
	}
}

// A component's Go memory settings go into its environment, unless the
// node's own environment has them (the user's choice wins).
func TestMemoryEnv(t *testing.T) {
	share := components.MemoryShare{GoLimit: 256 << 20, GOGC: 50, Low: 128 << 20, High: 424 << 20}
	env := func(vars ...string) func(string) (string, bool) {
		return func(k string) (string, bool) {
			for _, v := range vars {
				if name, val, _ := strings.Cut(v, "="); name == k {
					return val, true
				}
			}
			return "", false
		}
	}
	for _, tc := range []struct {
		name  string
		share components.MemoryShare
		user  []string
		want  []string
	}{
		{"derived", share, nil, []string{"GOMEMLIMIT=256MiB", "GOGC=50"}},
		{"user's limit", share, []string{"GOMEMLIMIT=1GiB"}, []string{"GOGC=50"}},
		{"user's GOGC, even empty", share, []string{"GOGC="}, []string{"GOMEMLIMIT=256MiB"}},
		{"big node: no GOGC", components.MemoryShare{GoLimit: 4 << 30}, nil, []string{"GOMEMLIMIT=4096MiB"}},
		{"memory unknown", components.MemoryShare{}, nil, nil},
	} {
		if got := memoryEnv(tc.share, env(tc.user...)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestMemoryLine(t *testing.T) {
	specs := []supervisor.Spec{
		{Name: "etcd", Env: []string{"GOMEMLIMIT=128MiB", "GOGC=50"}, MemoryLow: 64 << 20},
		{Name: "kube-apiserver", Env: []string{"GOMEMLIMIT=256MiB"}, MemoryLow: 128 << 20},
	}
	got := memoryLine(components.NodeMemory{Total: 1 << 30}, specs)
	want := "memory: 1024 MiB, 192 MiB of it protected for the components; Go memory limits (MiB): etcd 128, kube-apiserver 256"
	if got != want {
		t.Errorf("%q\nwant %q", got, want)
	}
	if got := memoryLine(components.NodeMemory{}, specs); got != "" {
		t.Errorf("memory unknown: %q", got)
	}
}

func TestNodeAPIAddresses(t *testing.T) {
	cfg := node.Default()
	cfg.Address = "10.120.0.10"
	cfg.Network.Additional = []node.Network{{Interface: "eth1", Address: "10.0.2.15/24"}, {Interface: "eth2", Address: "10.120.0.10/24"}}
	if got := nodeAPIAddresses(&cfg); len(got) != 2 || got[0] != "10.120.0.10" || got[1] != "10.0.2.15" {
		t.Errorf("nodeAPIAddresses = %v, want the node's address and eth1's", got)
	}
}
