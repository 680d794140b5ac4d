package etcdmember

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
)

// snapshotOf writes keys to a new member and returns a snapshot of it.
func snapshotOf(t *testing.T, ctx context.Context, ca *testCA, keys int) []byte {
	t.Helper()
	m := ca.member(t, "src")
	ca.start(t, m, "")
	cli := ca.client(t, m)
	for i := range keys {
		if _, err := cli.Put(ctx, fmt.Sprintf("/registry/key-%d", i), fmt.Sprintf("value-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := Snapshot(ctx, cli, &buf); err != nil {
		t.Fatal(err)
	}
	m.stop()
	return buf.Bytes()
}

// pend leaves snap for the next ApplyPendingRestore of dataDir, as the
// node API does.
func pend(t *testing.T, dataDir string, snap []byte) {
	t.Helper()
	f := Files{DataDir: dataDir}
	if err := os.MkdirAll(f.RecoveryDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Upload(), snap, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := AcceptSnapshot(dataDir); err != nil {
		t.Fatal(err)
	}
}

// checkRestored starts m from its restored data dir and wants the keys
// of the snapshot, m alone in the cluster, and the revision moved
// forward and compacted.
func checkRestored(t *testing.T, ctx context.Context, ca *testCA, m *testMember, keys int) {
	t.Helper()
	ca.start(t, m, "")
	defer m.stop()
	cli := ca.client(t, m)
	resp, err := cli.Get(ctx, "/registry/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != keys || resp.Header.Revision < RestoreBump {
		t.Errorf("restored: %d keys at revision %d; want %d keys, a revision past %d", len(resp.Kvs), resp.Header.Revision, keys, RestoreBump)
	}
	if _, err := cli.Get(ctx, "/registry/key-0", clientv3.WithRev(resp.Header.Revision-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("a read before the restored revision: %v, want %v (watches must list again)", err, rpctypes.ErrCompacted)
	}
	checkVoting(t, ctx, cli, m.name)
	if _, err := cli.Put(ctx, "/registry/after", "x"); err != nil {
		t.Errorf("a write to the restored member: %v", err)
	}
}

func TestRestore(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ctx := testContext(t)
	snap := snapshotOf(t, ctx, ca, 50)
	r := ca.member(t, "r1")
	f := Files{DataDir: r.dir}
	opts := RestoreOptions{DataDir: r.dir, Name: r.name, PeerURL: r.peerURL, Token: "kiln-test"}
	apply := func() string {
		t.Helper()
		var log testutil.SyncBuffer
		opts.Log = &log
		if err := ApplyPendingRestore(opts); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(f.PendingSnapshot()); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the snapshot is still pending after the restore (%v); log:\n%s", err, log.String())
		}
		return log.String()
	}

	// Into a fresh data dir.
	pend(t, r.dir, snap)
	if log := apply(); !strings.Contains(log, "restore: restoring it into "+f.restoring()) || strings.Contains(log, "kept in") {
		t.Errorf("log:\n%s\nwant a restore and no data set aside (there was none)", log)
	}
	// Sent again before etcd ran (the first answer was lost): in place
	// already, nothing restored again.
	pend(t, r.dir, snap)
	if log := apply(); !strings.Contains(log, "is in place already") {
		t.Errorf("log:\n%s\nwant the snapshot found in place", log)
	}
	checkRestored(t, ctx, ca, r, 50)
	cli := ca.client(t, r)
	// The entry point records the restore once etcd runs.
	ca.start(t, r, "")
	if err := PublishRestore(ctx, cli, r.dir, uint64(r.e.Server.Cluster().ID())); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, RestoredKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("%s after PublishRestore: %v %v", RestoredKey, resp, err)
	}
	if m, ok := ParseRestoreMarker(resp.Kvs[0].Value); !ok || m.Node != "r1" || m.ClusterID != fmt.Sprintf("%x", uint64(r.e.Server.Cluster().ID())) {
		t.Errorf("restore marker %q", resp.Kvs[0].Value)
	}
	if _, err := ReadRestoreMarker(r.dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the data dir's marker after PublishRestore: %v, want it gone", err)
	}
	r.stop()

	// Restored a second time: the data of the first restore (with its
	// write after) is set aside.
	pend(t, r.dir, snap)
	if log := apply(); !strings.Contains(log, "the data before is kept in "+f.BeforeRestore()) {
		t.Errorf("log:\n%s\nwant the data set aside", log)
	}
	checkRestored(t, ctx, ca, r, 50)

	// Interrupted between its two renames: the data dir is gone, the
	// data before is set aside, the snapshot still pending. Done again,
	// it keeps the data before.
	sentinel := filepath.Join(f.BeforeRestore(), "sentinel")
	if err := os.WriteFile(sentinel, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(r.dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(f.restoring(), "member"), 0o700); err != nil { // half written
		t.Fatal(err)
	}
	pend(t, r.dir, snap)
	apply()
	if _, err := os.Stat(sentinel); err != nil {
		t.Errorf("the data before the interrupted restore: %v", err)
	}
	checkRestored(t, ctx, ca, r, 50)
}

// A damaged snapshot is refused: set aside, the data dir untouched, and
// etcd starts from it as it was.
func TestRestoreRefusesDamaged(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ctx := testContext(t)
	snap := snapshotOf(t, ctx, ca, 20)
	m := ca.member(t, "m1")
	ca.start(t, m, "")
	if _, err := ca.client(t, m).Put(ctx, "/registry/mine", "before"); err != nil {
		t.Fatal(err)
	}
	m.stop()
	before := treeDigest(t, m.dir)

	bad := bytes.Clone(snap)
	bad[len(bad)/2] ^= 0x40
	f := Files{DataDir: m.dir}
	// The node API refuses it on arrival...
	if err := os.MkdirAll(f.RecoveryDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Upload(), bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := AcceptSnapshot(m.dir); err == nil || !strings.Contains(err.Error(), "sha256 does not match") {
		t.Errorf("AcceptSnapshot of a flipped byte: %v", err)
	}
	if _, err := os.Stat(f.Upload()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the damaged upload is kept: %v", err)
	}
	// ... and the entry point one damaged on disk since.
	if err := os.WriteFile(f.PendingSnapshot(), bad, 0o600); err != nil {
		t.Fatal(err)
	}
	var log testutil.SyncBuffer
	if err := ApplyPendingRestore(RestoreOptions{DataDir: m.dir, Name: m.name, PeerURL: m.peerURL, Token: "kiln-test", Log: &log}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "restore: refusing "+f.PendingSnapshot()+": ") || !strings.Contains(log.String(), "etcd starts from its data as it was") {
		t.Errorf("log:\n%s\nwant the refusal", log.String())
	}
	if _, err := os.Stat(f.PendingSnapshot()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the damaged snapshot is still pending: %v", err)
	}
	if got, _ := os.ReadFile(f.Refused()); !bytes.Equal(got, bad) {
		t.Errorf("the damaged snapshot is not kept as %s", f.Refused())
	}
	if after := treeDigest(t, m.dir); after != before {
		t.Errorf("the data dir changed:\n%s\nwant\n%s", after, before)
	}
	// Applied again (the next start): nothing to do.
	if err := ApplyPendingRestore(RestoreOptions{DataDir: m.dir, Name: m.name, PeerURL: m.peerURL, Token: "kiln-test"}); err != nil {
		t.Fatal(err)
	}
	ca.start(t, m, "")
	resp, err := ca.client(t, m).Get(ctx, "/registry/mine")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "before" {
		t.Errorf("the member's own data after the refusal: %v %v", resp, err)
	}
}

// treeDigest names every file under dir with its size and sha256.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		lines = append(lines, fmt.Sprintf("%s %d %x", strings.TrimPrefix(path, dir), len(b), sha256.Sum256(b)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// Scheduled snapshots: written, verified, each with its record, and the
// oldest pruned.
func TestSchedule(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ctx := testContext(t)
	m := ca.member(t, "m1")
	ca.start(t, m, "")
	cli := ca.client(t, m)
	if _, err := cli.Put(ctx, "/registry/a", "b"); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "snapshots")
	// Left by a process that stopped while writing one.
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, ".etcd-123.part"), nil, 0o600)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var log testutil.SyncBuffer
	go func() {
		defer close(done)
		Schedule(sctx, cli, ScheduleOptions{
			Dir: dir, Interval: time.Second, Keep: 2, Log: &log,
			Info:   nodeapi.SnapshotInfo{Cluster: "c", CAHash: "sha256:abc", Node: "m1"},
			Voting: func() bool { return true },
		})
	}()
	testutil.Eventually(t, 20*time.Second, 100*time.Millisecond, "3 scheduled snapshots", func() error {
		if n := strings.Count(log.String(), "scheduled snapshot "); n < 3 {
			return fmt.Errorf("log so far:\n%s", log.String())
		}
		return nil
	})
	cancel()
	<-done
	if !strings.Contains(log.String(), "; removed etcd-") {
		t.Errorf("log:\n%s\nwant a snapshot pruned", log.String())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 4 {
		t.Fatalf("%s holds %v; want the newest 2 snapshots and their records", dir, names)
	}
	for _, n := range names {
		if !strings.HasSuffix(n, ".db") {
			continue
		}
		path := filepath.Join(dir, n)
		if err := VerifySnapshotFile(path); err != nil {
			t.Error(err)
		}
		var info nodeapi.SnapshotInfo
		b, err := os.ReadFile(nodeapi.SnapshotInfoFile(path))
		if err == nil {
			err = json.Unmarshal(b, &info)
		}
		st, _ := os.Stat(path)
		if err != nil || info.CAHash != "sha256:abc" || info.Cluster != "c" || info.Node != "m1" || info.Size != st.Size() || len(info.SHA256) != 64 {
			t.Errorf("record of %s: %+v, %v", n, info, err)
		}
	}
}
