package etcdmember

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"

	"kiln/internal/fsutil"
)

// Files are where a member's recovery keeps its files, beside its data
// dir DIR (kiln: DATA/etcd): a snapshot to restore and the reset marker
// in DIR-restore, the data set aside in DIR.before-restore (the data a
// restore replaced) and DIR.removed (the data of a member removed from
// its cluster, which joined it again from nothing).
type Files struct{ DataDir string }

// RecoveryDir holds the pending snapshot and the reset marker:
// DATA/etcd-restore.
func (f Files) RecoveryDir() string { return f.DataDir + "-restore" }

// PendingSnapshot is a snapshot the etcd entry point restores at its
// next start, then removes: DATA/etcd-restore/snapshot.db. Only a
// verified snapshot is renamed to it.
func (f Files) PendingSnapshot() string { return filepath.Join(f.RecoveryDir(), "snapshot.db") }

// Upload is where the node API receives a snapshot before it is
// verified and renamed to PendingSnapshot.
func (f Files) Upload() string { return f.PendingSnapshot() + ".part" }

// Refused is a pending snapshot the entry point found damaged: kept for
// a look, never applied.
func (f Files) Refused() string { return f.PendingSnapshot() + ".refused" }

// ResetMarker asks the entry point to start once with etcd's
// ForceNewCluster: DATA/etcd-restore/reset.
func (f Files) ResetMarker() string { return filepath.Join(f.RecoveryDir(), "reset") }

// BeforeRestore keeps the data a restore replaced (the last one only).
func (f Files) BeforeRestore() string { return f.DataDir + ".before-restore" }

// Removed keeps the data of a member that was removed from its cluster,
// or whose cluster was replaced by a restore on another master, when it
// joins the cluster again (the last one only).
func (f Files) Removed() string { return f.DataDir + ".removed" }

// restoring is where a restore writes the new data dir before it
// replaces the old one.
func (f Files) restoring() string { return f.DataDir + ".restoring" }

// restoreMarker is written into a restored data dir: which snapshot it
// was restored from, and when. It moves into place with the data dir (one
// rename), so a restore interrupted after that rename knows it is done.
func (f Files) restoreMarker() string { return filepath.Join(f.DataDir, restoreMarkerName) }

const restoreMarkerName = "kiln-restored.json"

// RestoreBump is how far a restore moves etcd's revision forward, and
// marks it compacted: a running API server's watches (and through them
// every controller's) were at revisions the snapshot may not have
// reached; after the bump every revision they know is in the past and
// compacted, so they list again instead of waiting for revisions that
// would come back with other content. (What etcd's documentation and
// Kubernetes' suggest: 1,000,000,000.)
const RestoreBump = 1_000_000_000

// RestoreOptions describe the member a pending snapshot is restored
// into.
type RestoreOptions struct {
	// DataDir is the member's data dir (etcd's --data-dir); its WAL is
	// inside it.
	DataDir string
	// Name and PeerURL are the member's (--name,
	// --initial-advertise-peer-urls): the restored cluster is this member
	// alone.
	Name, PeerURL string
	// Token is the cluster token (--initial-cluster-token). The restored
	// cluster's is Token, a suffix and the time, so that its member and
	// cluster IDs differ from the cluster before: members of that one
	// still running cannot mistake this member for theirs.
	Token string
	// Log gets a line per step; nil: nowhere.
	Log io.Writer
}

// RestoreMarker is what a restored data dir records, and what the etcd
// entry point writes to RestoredKey once the restored member runs.
type RestoreMarker struct {
	// Node is the member that was restored.
	Node string `json:"node"`
	// At is when.
	At time.Time `json:"at"`
	// SnapshotHash is etcd's sha256 at the snapshot's end, in hex.
	SnapshotHash string `json:"snapshotHash"`
	// ClusterID is the restored cluster's ID, in hex (in RestoredKey
	// only: a copy of the key in a later snapshot is of another
	// cluster).
	ClusterID string `json:"clusterID,omitempty"`
}

// RestoredKey is the key of a restored cluster's RestoreMarker. It is
// outside /registry, where the API server keeps everything, and tells
// the other masters that their cluster was replaced (see Displaced).
const RestoredKey = "kiln/etcd/restored"

// ApplyPendingRestore restores the pending snapshot (Files.
// PendingSnapshot), if there is one, into a fresh data dir for a
// cluster of this member alone, then sets the current data dir aside
// (Files.BeforeRestore, replacing an older one), moves the restored one
// into place and removes the snapshot: a snapshot is applied once. The
// etcd entry point calls it before it starts etcd.
//
// Each step can be interrupted and the whole done again: the restored
// data dir replaces the current one by one rename, and carries a
// marker naming the snapshot, so a snapshot already in place is not
// restored a second time over the data it replaced.
//
// A snapshot that fails its check, or that etcd cannot restore, is
// refused: renamed to Files.Refused, the data dir left as it was, and
// ApplyPendingRestore returns nil (etcd starts from its data). Errors
// are for what leaves the data dir in doubt (a rename that fails).
func ApplyPendingRestore(opts RestoreOptions) error {
	f := Files{DataDir: opts.DataDir}
	snap := f.PendingSnapshot()
	if _, err := os.Stat(snap); errors.Is(err, fs.ErrNotExist) {
		// A restore interrupted before its swap, whose snapshot went
		// since (removed by hand): its half-written data dir is of no
		// use.
		if _, err := os.Stat(f.restoring()); err == nil {
			logf(opts.Log, "restore: removing %s, left by an interrupted restore whose snapshot is gone", f.restoring())
			return os.RemoveAll(f.restoring())
		}
		return nil
	} else if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	sum, err := snapshotHash(snap)
	if err != nil {
		return refuse(f, opts.Log, err)
	}
	if m, err := ReadRestoreMarker(opts.DataDir); err == nil && m.SnapshotHash == sum {
		logf(opts.Log, "restore: %s is in place already (a restore interrupted after its swap); removing the snapshot", snap)
		return removeSynced(snap)
	}
	logf(opts.Log, "restore: verifying %s", snap)
	if err := VerifySnapshotFile(snap); err != nil {
		return refuse(f, opts.Log, err)
	}
	token := fmt.Sprintf("%s-restored-%d", opts.Token, time.Now().UnixNano())
	logf(opts.Log, "restore: restoring it into %s: a cluster of %s alone at %s, revisions moved %d forward and compacted", f.restoring(), opts.Name, opts.PeerURL, RestoreBump)
	if err := os.RemoveAll(f.restoring()); err != nil {
		return fmt.Errorf("restore: removing an earlier try: %w", err)
	}
	err = snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
		SnapshotPath:        snap,
		Name:                opts.Name,
		OutputDataDir:       f.restoring(),
		PeerURLs:            []string{opts.PeerURL},
		InitialCluster:      opts.Name + "=" + opts.PeerURL,
		InitialClusterToken: token,
		RevisionBump:        RestoreBump,
		MarkCompacted:       true,
	})
	if err != nil {
		os.RemoveAll(f.restoring())
		return refuse(f, opts.Log, fmt.Errorf("etcd cannot restore it: %w", err))
	}
	marker, _ := json.Marshal(RestoreMarker{Node: opts.Name, At: time.Now().UTC(), SnapshotHash: sum})
	if err := writeSynced(filepath.Join(f.restoring(), restoreMarkerName), marker); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := syncDir(f.restoring()); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if _, err := os.Stat(opts.DataDir); err == nil {
		// Only a data dir that is there is set aside: after a swap
		// interrupted between its two renames, BeforeRestore holds the
		// data before, and stays.
		if err := os.RemoveAll(f.BeforeRestore()); err != nil {
			return fmt.Errorf("restore: removing the older %s: %w", f.BeforeRestore(), err)
		}
		if err := os.Rename(opts.DataDir, f.BeforeRestore()); err != nil {
			return fmt.Errorf("restore: setting the data dir aside: %w", err)
		}
		logf(opts.Log, "restore: the data before is kept in %s", f.BeforeRestore())
	}
	if err := os.Rename(f.restoring(), opts.DataDir); err != nil {
		return fmt.Errorf("restore: moving the restored data dir into place: %w", err)
	}
	if err := syncDir(filepath.Dir(opts.DataDir)); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := removeSynced(snap); err != nil {
		return err
	}
	logf(opts.Log, "restore: %s is in place; the snapshot is removed (applied once)", opts.DataDir)
	return nil
}

// AcceptSnapshot checks the snapshot received at Files.Upload
// (VerifySnapshotFile) and only then renames it to PendingSnapshot,
// replacing one not yet applied, for the entry point's next start. A
// snapshot that fails is removed, and the error says why. A refused
// snapshot of before is removed: the one to look at is this one's.
func AcceptSnapshot(dataDir string) error {
	f := Files{DataDir: dataDir}
	if err := VerifySnapshotFile(f.Upload()); err != nil {
		os.Remove(f.Upload())
		return err
	}
	if err := os.Remove(f.Refused()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Rename(f.Upload(), f.PendingSnapshot()); err != nil {
		return err
	}
	return syncDir(f.RecoveryDir())
}

// refuse sets a snapshot that cannot be restored aside, so the next
// start does not try it again, and leaves the data dir as it is.
func refuse(f Files, log io.Writer, why error) error {
	snap := f.PendingSnapshot()
	if err := os.Rename(snap, f.Refused()); err != nil {
		return fmt.Errorf("restore: refusing %s (%v), and cannot set it aside: %w", snap, why, err)
	}
	logf(log, "restore: refusing %s: %v; it is now %s and etcd starts from its data as it was; send a good snapshot (kiln etcd restore)", snap, why, f.Refused())
	return nil
}

// snapshotHash is the sha256 etcd appends to a snapshot, in hex: what
// names a snapshot in a restored data dir's marker.
func snapshotHash(path string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return "", err
	}
	if st.Size() < 32 {
		return "", fmt.Errorf("%d bytes is not an etcd snapshot", st.Size())
	}
	sum := make([]byte, 32)
	if _, err := fh.ReadAt(sum, st.Size()-32); err != nil {
		return "", err
	}
	return hex.EncodeToString(sum), nil
}

// ReadRestoreMarker reads the marker of a data dir restored from a
// snapshot; an error wrapping fs.ErrNotExist when it has none (never
// restored, or its marker is written to RestoredKey and removed).
func ReadRestoreMarker(dataDir string) (RestoreMarker, error) {
	var m RestoreMarker
	b, err := os.ReadFile(filepath.Join(dataDir, restoreMarkerName))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", filepath.Join(dataDir, restoreMarkerName), err)
	}
	return m, nil
}

// PublishRestore writes the marker of a restored data dir to
// RestoredKey, with the cluster's ID, through cli (a client of the
// restored member), then removes the marker file. Other masters whose
// cluster the restore replaced read it there (Displaced).
func PublishRestore(ctx context.Context, cli *clientv3.Client, dataDir string, clusterID uint64) error {
	m, err := ReadRestoreMarker(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	m.ClusterID = fmt.Sprintf("%x", clusterID)
	b, _ := json.Marshal(m)
	if _, err := call(ctx, cli, func(ctx context.Context) (*clientv3.PutResponse, error) {
		return cli.Put(ctx, RestoredKey, string(b))
	}); err != nil {
		return fmt.Errorf("recording the restore in etcd (%s): %w", RestoredKey, err)
	}
	return removeSynced(filepath.Join(dataDir, restoreMarkerName))
}

// ParseRestoreMarker reads RestoredKey's value; ok is false for a value
// that is not a marker.
func ParseRestoreMarker(value []byte) (RestoreMarker, bool) {
	var m RestoreMarker
	if err := json.Unmarshal(value, &m); err != nil || m.At.IsZero() || m.ClusterID == "" {
		return RestoreMarker{}, false
	}
	return m, true
}

// RequestReset writes the reset marker: the entry point's next start
// starts etcd once with ForceNewCluster from its data. by says who asked
// (for the log).
func RequestReset(dataDir, by string) error {
	f := Files{DataDir: dataDir}
	if err := os.MkdirAll(f.RecoveryDir(), 0o700); err != nil {
		return err
	}
	line := fmt.Sprintf("reset asked for by %s at %s\n", by, time.Now().UTC().Format(time.RFC3339))
	if err := writeSynced(f.ResetMarker(), []byte(line)); err != nil {
		return err
	}
	return syncDir(f.RecoveryDir())
}

// ResetRequested reports whether the reset marker is there, and what it
// says.
func ResetRequested(dataDir string) (string, bool) {
	b, err := os.ReadFile(Files{DataDir: dataDir}.ResetMarker())
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}

// ResetDone removes the reset marker: the reset is done (read once).
func ResetDone(dataDir string) error {
	err := removeSynced(Files{DataDir: dataDir}.ResetMarker())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// LeaderAnswer is a member that answered with a leader: its cluster has
// a quorum.
type LeaderAnswer struct {
	Endpoint        string
	Leader, Cluster uint64
}

// FindLeader asks each of cli's endpoints for its status and returns
// the first that answers with a leader; ok is false when none does
// (each is down, or has lost its quorum).
func FindLeader(ctx context.Context, cli *clientv3.Client) (LeaderAnswer, bool) {
	for _, ep := range cli.Endpoints() {
		st := memberStatus(ctx, cli, []string{ep})
		if st != nil && st.Leader != 0 {
			return LeaderAnswer{Endpoint: ep, Leader: st.Leader, Cluster: st.Header.ClusterId}, true
		}
	}
	return LeaderAnswer{}, false
}

// writeSynced writes a new file and syncs it.
func writeSynced(path string, data []byte) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = fh.Write(data)
	if err == nil {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	return err
}

// removeSynced removes a file and syncs its directory, so the removal
// survives a power cut.
func removeSynced(path string) error {
	if err := os.Remove(path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir syncs a directory: the renames and removals in it are on disk.
func syncDir(dir string) error { return fsutil.SyncDir(dir) }
