package components

import (
	"maps"
	"slices"
	"testing"
	"time"

	"kiln/configs/node"
)

// Scheduled snapshots are the etcd entry point's flags: into
// DATA/etcd-snapshots on a master with a state disk; the interval alone
// (so it says why it takes none) on a diskless one; nothing when they
// are off.
func TestEtcdSnapshotFlags(t *testing.T) {
	env := testEnv(t)
	snapshotFlags := func() map[string]string {
		out := map[string]string{}
		for k, v := range (Etcd{}).Flags(env) {
			if k != "config-file" {
				out[k] = v
			}
		}
		return out
	}
	if got := snapshotFlags(); !maps.Equal(got, map[string]string{"snapshot-interval": "6h0m0s"}) {
		t.Errorf("diskless master: %v", got)
	}
	env.Config.Storage.StateDisk = "LABEL=kiln-state"
	env.Config.ControlPlane.Snapshots = node.Snapshots{Interval: node.Duration(90 * time.Minute), Keep: 3}
	want := map[string]string{
		"snapshot-interval": "1h30m0s", "snapshot-dir": env.Path("etcd-snapshots"), "snapshot-keep": "3",
		"cluster-name": "unit", "ca-hash": env.Cluster.CAHash,
	}
	if got := snapshotFlags(); !maps.Equal(got, want) {
		t.Errorf("master with a state disk: %v, want %v", got, want)
	}
	env.Config.ControlPlane.Snapshots.Interval = 0
	if got := snapshotFlags(); len(got) != 0 {
		t.Errorf("snapshots off: %v", slices.Sorted(maps.Keys(got)))
	}
}
