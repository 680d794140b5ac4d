package entry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kiln/components/etcdmember"
)

// Three masters through serveEtcd, as the node runs them: a member
// removed while it was down comes back with its data and joins again
// instead of stopping; after all are stopped, a reset starts the first
// from its data alone, and the second, back with data of the cluster
// before, joins it; a restore on the first replaces the cluster, and the
// second joins the restored one.
func TestRunEtcdRecovery(t *testing.T) {
	f := newEtcdFiles(t)
	ms := []etcdMaster{f.master(t, "m1"), f.master(t, "m2"), f.master(t, "m3")}
	for _, m := range ms {
		// etcd changes its members only once they have been connected
		// for 5 s: seconds of waiting at every join, not what this tests.
		appendFile(t, m.configFile, "strict-reconfig-check: false\n")
	}
	snapshots := filepath.Join(f.dir, "etcd-snapshots")
	args := func(i int, peers ...etcdMaster) []string {
		a := append(f.args(ms[i], i == 0, peers...), "--bootstrap-grace=1s", "--peer-check-interval=500ms")
		switch i {
		case 0: // with a state disk: the first snapshot at once
			a = append(a, "--snapshot-dir="+snapshots, "--snapshot-interval=1h", "--snapshot-keep=2", "--cluster-name=c", "--ca-hash=sha256:test")
		case 1: // diskless
			a = append(a, "--snapshot-interval=6h")
		}
		return a
	}
	stderr := captureStderr(t)
	runs := []etcdRun{startEtcd(args(0, ms[1], ms[2]))}
	waitFor(t, stderr, "ready to serve client requests", 1)
	runs = append(runs, startEtcd(args(1, ms[0], ms[2])))
	waitFor(t, stderr, "is a voting member", 1)
	runs = append(runs, startEtcd(args(2, ms[0], ms[1])))
	waitFor(t, stderr, "is a voting member", 2)
	checkMembers(t, f, ms...)
	put(t, f, ms[0], 20)
	waitFor(t, stderr, "etcd: scheduled snapshot "+snapshots+"/etcd-", 1)
	if out := stderr(); !strings.Contains(out, "etcd: scheduled snapshots are off: this master has no state disk") {
		t.Errorf("stderr:\n%s\nwant the diskless master to say why it takes no snapshots", out)
	}
	if names, _ := filepath.Glob(filepath.Join(snapshots, "etcd-*.db*")); len(names) != 2 {
		t.Errorf("scheduled snapshots: %v, want one and its record", names)
	}

	// m3 is removed while it is down, and comes back with its data.
	runs[2].stop <- syscall.SIGTERM
	runs[2].wait(t, stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := etcdmember.Remove(ctx, etcdClient(t, f, ms[0], ms[1]), "m3"); err != nil {
		t.Fatal(err)
	}
	runs[2] = startEtcd(args(2, ms[0], ms[1]))
	waitFor(t, stderr, "this member's data is no longer its cluster's; moved it to "+dataDir(f, "m3")+".removed and joining the cluster again", 1)
	waitFor(t, stderr, "is a voting member", 3)
	if out := stderr(); !strings.Contains(out, "etcd: member ") || !strings.Contains(out, " was removed from cluster ") {
		t.Errorf("stderr:\n%s\nwant why m3 set its data aside", out)
	}
	checkMembers(t, f, ms...)
	checkKeys(t, f, ms[2], 20)

	// The masters lose their quorum for good: a reset starts m1 alone.
	stopLeaderFirst(t, f, ms, runs, stderr)
	if err := etcdmember.RequestReset(dataDir(f, "m1"), "the test"); err != nil {
		t.Fatal(err)
	}
	runs = []etcdRun{startEtcd(args(0, ms[1], ms[2]))}
	waitFor(t, stderr, "reset: done", 1)
	if out := stderr(); !strings.Contains(out, "etcd: reset: starting as a cluster of this member alone from its own data (etcd's force-new-cluster; reset asked for by the test at ") {
		t.Errorf("stderr:\n%s\nwant the reset", out)
	}
	checkMembers(t, f, ms[0])
	checkKeys(t, f, ms[0], 20)
	if _, ok := etcdmember.ResetRequested(dataDir(f, "m1")); ok {
		t.Error("the reset marker is still there after the reset")
	}
	// m2 returns with its data of the cluster before: removed by the
	// reset, it joins again.
	runs = append(runs, startEtcd(args(1, ms[0], ms[2])))
	waitFor(t, stderr, "moved it to "+dataDir(f, "m2")+".removed and joining the cluster again", 1)
	waitFor(t, stderr, "is a voting member", 4)
	checkMembers(t, f, ms[0], ms[1])

	// A restore on m1 from a snapshot with fewer keys: m2 notices its
	// cluster was replaced and joins the restored one.
	var snap bytes.Buffer
	if _, err := etcdmember.Snapshot(ctx, etcdClient(t, f, ms[0]), &snap); err != nil {
		t.Fatal(err)
	}
	put(t, f, ms[0], 30) // after the snapshot: lost by the restore
	stopLeaderFirst(t, f, ms[:1], runs[:1], stderr)
	files := etcdmember.Files{DataDir: dataDir(f, "m1")}
	if err := os.WriteFile(files.Upload(), snap.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := etcdmember.AcceptSnapshot(dataDir(f, "m1")); err != nil {
		t.Fatal(err)
	}
	runs[0] = startEtcd(args(0, ms[1], ms[2]))
	waitFor(t, stderr, "restore: "+dataDir(f, "m1")+" is in place; the snapshot is removed (applied once)", 1)
	waitFor(t, stderr, ", restored from a snapshot on m1 at ", 1)
	waitFor(t, stderr, "is a voting member", 5)
	checkMembers(t, f, ms[0], ms[1])
	checkKeys(t, f, ms[1], 20)
	if _, err := os.Stat(files.BeforeRestore()); err != nil {
		t.Errorf("the data before the restore: %v", err)
	}
	if _, err := os.Stat(files.PendingSnapshot()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the snapshot is still pending: %v", err)
	}
	stopLeaderFirst(t, f, ms[:2], runs, stderr)
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		_, err = fh.WriteString(text)
		fh.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
}

func dataDir(f etcdFiles, name string) string { return filepath.Join(f.dir, name) }

// put writes keys /registry/key-0 … key-(n-1) through m.
func put(t *testing.T, f etcdFiles, m etcdMaster, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli := etcdClient(t, f, m)
	for i := range n {
		if _, err := cli.Put(ctx, fmt.Sprintf("/registry/key-%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
}

// checkKeys wants exactly n keys under /registry/ read through m.
func checkKeys(t *testing.T, f etcdFiles, m etcdMaster, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := etcdClient(t, f, m).Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != int64(n) {
		t.Errorf("%d keys through %s, want %d", resp.Count, m.name, n)
	}
}
