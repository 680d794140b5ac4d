package etcdmember

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kiln/configs/nodeapi"
	"kiln/internal/ctxutil"
)

// Scheduled snapshots are named by the time they were taken (UTC), so
// that the names sort as the times do: etcd-20260102T150405Z.db, with
// its record (nodeapi.SnapshotInfo, as kiln etcd snapshot save writes
// one) in etcd-20260102T150405Z.db.json.
const (
	snapshotPrefix     = "etcd-"
	snapshotSuffix     = ".db"
	snapshotTimeLayout = "20060102T150405Z"
)

// ScheduleOptions describe a member's scheduled snapshots.
type ScheduleOptions struct {
	// Dir holds the snapshots (kiln: DATA/etcd-snapshots, on a state
	// disk); created if missing.
	Dir string
	// Interval between two snapshots; the first is due an Interval
	// after the newest in Dir (at once if there is none), so a restart
	// neither delays nor repeats one.
	Interval time.Duration
	// Keep is how many are kept, the newest.
	Keep int
	// Info is the record's identity: Cluster, CAHash and Node.
	Info nodeapi.SnapshotInfo
	// Voting reports whether the member votes: a learner's data may not
	// have caught up, and its snapshots wait until it is promoted.
	Voting func() bool
	// Log gets a line per snapshot and per failure; nil: nowhere.
	Log io.Writer
}

// Schedule takes a snapshot of the member cli reaches (its own
// endpoint alone) every opts.Interval, into opts.Dir, and keeps the
// newest opts.Keep, until ctx ends. A snapshot that fails is logged and
// tried again after a minute (or the interval, if shorter).
func Schedule(ctx context.Context, cli *clientv3.Client, opts ScheduleOptions) {
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		logf(opts.Log, "scheduled snapshots: %v; none are taken", err)
		return
	}
	// Snapshots being written when the process stopped.
	if parts, _ := filepath.Glob(filepath.Join(opts.Dir, "."+snapshotPrefix+"*.part")); len(parts) > 0 {
		for _, p := range parts {
			os.Remove(p)
		}
	}
	logf(opts.Log, "scheduled snapshots: every %s into %s, keeping the newest %d", opts.Interval, opts.Dir, opts.Keep)
	retry := min(time.Minute, opts.Interval)
	var retryAt time.Time
	toldLearner := false
	for {
		next := time.Now()
		if newest, ok := newestSnapshot(opts.Dir); ok {
			next = newest.Add(opts.Interval)
		}
		if retryAt.After(next) {
			next = retryAt
		}
		if err := ctxutil.Sleep(ctx, time.Until(next)); err != nil {
			return
		}
		if opts.Voting != nil && !opts.Voting() {
			if !toldLearner {
				toldLearner = true
				logf(opts.Log, "scheduled snapshots: waiting for this member to be promoted (a learner's data may not have caught up)")
			}
			retryAt = time.Now().Add(retry)
			continue
		}
		path, info, err := SaveSnapshot(ctx, cli, opts.Dir, opts.Info)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			logf(opts.Log, "scheduled snapshot: %v; trying again in %s", err, retry)
			retryAt = time.Now().Add(retry)
			continue
		}
		retryAt = time.Time{}
		removed, err := PruneSnapshots(opts.Dir, opts.Keep)
		var pruned string
		switch {
		case err != nil:
			pruned = fmt.Sprintf("; removing older ones: %v", err)
		case len(removed) > 0:
			pruned = fmt.Sprintf("; removed %s (keeping the newest %d)", strings.Join(removed, ", "), opts.Keep)
		}
		logf(opts.Log, "scheduled snapshot %s: %d bytes, sha256 %s, verified%s", path, info.Size, info.SHA256[:16], pruned)
	}
}

// SaveSnapshot takes a snapshot of the member cli reaches into dir: to a
// temporary file, checked (VerifySnapshotFile), with its record (info
// with the time, size and sha256) beside it, then renamed to
// etcd-TIME.db. It returns the snapshot's path and record.
func SaveSnapshot(ctx context.Context, cli *clientv3.Client, dir string, info nodeapi.SnapshotInfo) (string, nodeapi.SnapshotInfo, error) {
	info.Taken = time.Now().UTC()
	path := filepath.Join(dir, snapshotPrefix+info.Taken.Format(snapshotTimeLayout)+snapshotSuffix)
	tmp, err := os.CreateTemp(dir, "."+snapshotPrefix+"*.part")
	if err != nil {
		return "", info, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := Snapshot(ctx, cli, io.MultiWriter(tmp, h))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", info, err
	}
	if err := VerifySnapshotFile(tmp.Name()); err != nil {
		return "", info, err
	}
	info.Size, info.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	record, _ := json.MarshalIndent(info, "", "  ")
	if err := writeSynced(nodeapi.SnapshotInfoFile(path), append(record, '\n')); err != nil {
		return "", info, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", info, err
	}
	return path, info, syncDir(dir)
}

// PruneSnapshots removes all but the newest keep snapshots of dir (each
// with its record), and records left without their snapshot; it returns
// the names of the snapshots removed.
func PruneSnapshots(dir string, keep int) ([]string, error) {
	names, err := snapshotNames(dir)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	if len(names) > keep {
		for _, n := range names[:len(names)-keep] {
			p := filepath.Join(dir, n)
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, n)
			if err := os.Remove(nodeapi.SnapshotInfoFile(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	records, _ := filepath.Glob(filepath.Join(dir, snapshotPrefix+"*"+snapshotSuffix+".json"))
	for _, r := range records {
		if _, err := os.Stat(strings.TrimSuffix(r, ".json")); errors.Is(err, fs.ErrNotExist) {
			os.Remove(r)
		}
	}
	return removed, errors.Join(errs...)
}

// snapshotNames lists dir's scheduled snapshots, oldest first.
func snapshotNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if _, ok := snapshotTime(e.Name()); ok && e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// snapshotTime is the time in a scheduled snapshot's name.
func snapshotTime(name string) (time.Time, bool) {
	s, ok := strings.CutPrefix(name, snapshotPrefix)
	if !ok {
		return time.Time{}, false
	}
	s, ok = strings.CutSuffix(s, snapshotSuffix)
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(snapshotTimeLayout, s)
	return t, err == nil
}

// newestSnapshot is the time of dir's newest scheduled snapshot.
func newestSnapshot(dir string) (time.Time, bool) {
	names, err := snapshotNames(dir)
	if err != nil || len(names) == 0 {
		return time.Time{}, false
	}
	return snapshotTime(names[len(names)-1])
}
