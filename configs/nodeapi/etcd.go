package nodeapi

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// The etcd paths of a master's node API (kiln etcd …). They answer only on
// masters, to the same admin clients as the status.
const (
	// PathEtcdMembers: GET, the members as JSON ([]EtcdMember).
	PathEtcdMembers = "/etcd/members"
	// PathEtcdRemove: POST PathEtcdRemove+NAME removes a member, or
	// answers 409 Conflict with the reason it will not (quorum).
	PathEtcdRemove = "/etcd/remove/"
	// PathEtcdSnapshot: GET, a snapshot of the node's etcd, streamed
	// (etcd's own format: the database with its sha256 appended), with
	// the cluster's identity in the headers below.
	PathEtcdSnapshot = "/etcd/snapshot"
	// PathEtcdRestore: POST, the body a snapshot (as PathEtcdSnapshot
	// streams it), HeaderCAHash its cluster's CA hash (from its
	// FILE.json) and HeaderSnapshotSHA256 the file's sha256: the node
	// checks both, keeps the snapshot once verified, and restarts its
	// etcd from it as a cluster of one. 409 Conflict: another cluster's
	// snapshot, or a restore or reset under way.
	PathEtcdRestore = "/etcd/restore"
	// PathEtcdReset: POST, the node's etcd restarts as a cluster of one
	// from its own data (etcd's --force-new-cluster). 409 Conflict while
	// a member with a leader answers: then there is nothing to reset.
	PathEtcdReset = "/etcd/reset"
)

// Headers of a snapshot answer: whose cluster it is.
const (
	HeaderCluster = "Kiln-Cluster"
	HeaderCAHash  = "Kiln-Ca-Hash"
	HeaderNode    = "Kiln-Node"
	// HeaderSnapshotSHA256 is a restore's: the hex sha256 of the whole
	// snapshot file, as its SnapshotInfo records it.
	HeaderSnapshotSHA256 = "Kiln-Snapshot-Sha256"
)

// SnapshotInfoFile is where SnapshotInfo of the snapshot at path is
// kept: beside it, path + ".json".
func SnapshotInfoFile(path string) string { return path + ".json" }

// EtcdMember is one member of a master's etcd cluster.
type EtcdMember struct {
	ID         string   `json:"id"` // hex, as etcdctl prints it
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs,omitempty"`
	// Learner: added, catching up, not yet voting.
	Learner bool `json:"learner,omitempty"`
	// Healthy: its client URL answered a status request just now.
	Healthy bool `json:"healthy"`
	Leader  bool `json:"leader,omitempty"`
}

// WriteEtcdMembers prints members as a table.
func WriteEtcdMembers(w io.Writer, members []EtcdMember) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tSTATUS\tHEALTHY\tPEER URLS")
	for _, m := range members {
		status := "voter"
		if m.Learner {
			status = "learner"
		}
		if m.Leader {
			status += ", leader"
		}
		name := m.Name
		if name == "" {
			name = "(not started)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\n", name, m.ID, status, m.Healthy, strings.Join(m.PeerURLs, ","))
	}
	tw.Flush()
}

// SnapshotInfo is what kiln etcd snapshot save writes beside a snapshot
// (FILE.json): which cluster it belongs to, so a restore can refuse a
// snapshot of another cluster before touching anything.
type SnapshotInfo struct {
	Cluster string    `json:"cluster"`
	CAHash  string    `json:"caHash"`
	Node    string    `json:"node"`
	Taken   time.Time `json:"taken"`
	Size    int64     `json:"size"`
	SHA256  string    `json:"sha256"` // of the whole file
}

// CheckSnapshotHash checks the sha256 etcd appends to a snapshot it
// streams (the last 32 bytes, of everything before them; the database is
// a whole number of 512-byte pages before it). It is the check a restore
// makes first, and the host CLI after a transfer: a truncated or damaged
// file fails it.
func CheckSnapshotHash(r io.ReaderAt, size int64) error {
	if size < 512+sha256.Size || size%512 != sha256.Size {
		return fmt.Errorf("etcd snapshot of %d bytes: not a database (whole 512-byte pages) followed by its 32-byte sha256: it was cut short, or is not a snapshot (truncated; a copy of member/snap/db has no sha256)", size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size-sha256.Size)); err != nil {
		return fmt.Errorf("etcd snapshot: reading it: %w", err)
	}
	want := make([]byte, sha256.Size)
	if _, err := r.ReadAt(want, size-sha256.Size); err != nil {
		return fmt.Errorf("etcd snapshot: reading its sha256: %w", err)
	}
	if !bytes.Equal(h.Sum(nil), want) {
		return errors.New("etcd snapshot: its sha256 does not match its content: the file is damaged; take a new snapshot")
	}
	return nil
}
