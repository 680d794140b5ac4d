package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/internal/bounded"
)

// etcdFlags are every kiln etcd command's: which master, which cluster.
type etcdFlags struct{ node, clusterDir string }

func (f *etcdFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.node, "node", "", "a master's node API, HOST or HOST:PORT (default port 10260; kiln cluster status lists make cluster's)")
	c.Flags().StringVar(&f.clusterDir, "cluster", defaultClusterDir, "cluster directory (its admin.kubeconfig authenticates kiln to the node)")
}

func (f *etcdFlags) hostPort() (string, error) {
	if f.node == "" {
		return "", usageError{fmt.Errorf("--node is required (a master's address)")}
	}
	hp, err := nodeHostPort(f.node)
	if err != nil {
		return "", usageError{err}
	}
	return hp, nil
}

func etcdCommand() *cobra.Command {
	c := groupCommand(&cobra.Command{
		Use:   "etcd",
		Short: "The masters' etcd: members, removing one, snapshots, restore, reset",
		Long: `Manage the cluster's etcd through a master's node API (port 10260, the
cluster's admin certificate): etcd itself is never exposed to the host.`,
	})
	snap := groupCommand(&cobra.Command{Use: "snapshot", Short: "etcd snapshots"})
	snap.AddCommand(etcdSnapshotSaveCommand())
	c.AddCommand(etcdMembersCommand(), etcdRemoveCommand(), snap, etcdRestoreCommand(), etcdResetCommand())
	return c
}

func etcdMembersCommand() *cobra.Command {
	var f etcdFlags
	var output string
	c := &cobra.Command{
		Use:   "members --node HOST[:PORT]",
		Short: "List etcd's members: name, ID, voter or learner, leader, healthy",
		Example: `  kiln etcd members --node 192.168.1.10
  kiln etcd members --node 127.0.0.1:41234 -o json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o %s: want table or json", bounded.Quote(output))}
			}
			hp, err := f.hostPort()
			if err != nil {
				return err
			}
			body, err := nodeGet(hp, f.clusterDir, nodeapi.PathEtcdMembers)
			if err != nil {
				return err
			}
			if output == "json" {
				_, err := c.OutOrStdout().Write(body)
				return err
			}
			var members []nodeapi.EtcdMember
			if err := json.Unmarshal(body, &members); err != nil {
				return fmt.Errorf("node %s: members: %w", hp, err)
			}
			nodeapi.WriteEtcdMembers(c.OutOrStdout(), members)
			return nil
		},
	}
	f.register(c)
	c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return c
}

func etcdRemoveCommand() *cobra.Command {
	var f etcdFlags
	c := &cobra.Command{
		Use:   "remove NAME --node HOST[:PORT]",
		Short: "Remove a master's etcd member (a machine gone for good); refused if it would lose quorum",
		Long: `Remove the etcd member NAME, asked of the master at --node. A removal that
would leave fewer answering voting members than a quorum is refused with
the reason, and nothing changes. A master that comes back without its data
replaces its own stale member by itself: remove a member only for a machine
that will not return.`,
		Example: `  kiln etcd remove kiln-master-3 --node 192.168.1.10`,
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := node.CheckHostname(args[0]); err != nil {
				return usageError{fmt.Errorf("NAME: %w", err)}
			}
			hp, err := f.hostPort()
			if err != nil {
				return err
			}
			return postToNode(c, hp, f.clusterDir, nodeapi.PathEtcdRemove+args[0], nil, nil, 30*time.Second)
		},
	}
	f.register(c)
	return c
}

func etcdSnapshotSaveCommand() *cobra.Command {
	var f etcdFlags
	var out string
	c := &cobra.Command{
		Use:   "save --node HOST[:PORT] -o FILE",
		Short: "Stream a snapshot of etcd from a master to FILE, its cluster's identity to FILE.json",
		Long: `Take a snapshot of etcd on the master at --node and write it to FILE (etcd's
format: the database with its sha256 appended, checked here after the
transfer), and FILE.json beside it: the cluster's name and CA hash, the
node, the time, the size and the file's sha256. A restore refuses a snapshot
of another cluster by that record. FILE is written 0600 (it holds every
Secret, encrypted at rest as the API server stores them) and replaced only
once complete.`,
		Example: `  kiln etcd snapshot save --node 192.168.1.10 -o etcd-$(date +%F).db`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{fmt.Errorf("-o FILE is required")}
			}
			hp, err := f.hostPort()
			if err != nil {
				return err
			}
			cl, err := cluster.Load(f.clusterDir)
			if err != nil {
				return err
			}
			info, err := saveSnapshot(hp, f.clusterDir, out)
			if err != nil {
				return err
			}
			if info.CAHash != cl.CAHash {
				os.Remove(out)
				os.Remove(out + ".json")
				return fmt.Errorf("node %s belongs to another cluster (CA %s, %s's is %s): snapshot not kept", hp, info.CAHash, f.clusterDir, cl.CAHash)
			}
			fmt.Fprintf(c.OutOrStdout(), "kiln etcd: snapshot of %s (cluster %s) written to %s: %s, sha256 %s\n", info.Node, info.Cluster, out, bounded.Size(info.Size), info.SHA256[:16])
			return nil
		},
	}
	f.register(c)
	c.Flags().StringVarP(&out, "output", "o", "", "the file to write")
	return c
}

// saveSnapshot streams the node's snapshot into a temporary file beside
// out, checks etcd's own checksum, and renames it into place with its
// record.
func saveSnapshot(hostPort, clusterDir, out string) (*nodeapi.SnapshotInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	resp, err := nodeDo(ctx, hostPort, clusterDir, http.MethodGet, nodeapi.PathEtcdSnapshot)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("node %s: %s: %s", hostPort, resp.Status, bounded.Shorten(strings.TrimSpace(string(body)), 1024))
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), resp.Body)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("node %s: receiving the snapshot: %w", hostPort, err)
	}
	if err := verifySnapshotFile(tmp.Name()); err != nil {
		return nil, fmt.Errorf("node %s: the snapshot received is damaged: %w", hostPort, err)
	}
	info := &nodeapi.SnapshotInfo{
		Cluster: resp.Header.Get(nodeapi.HeaderCluster), CAHash: resp.Header.Get(nodeapi.HeaderCAHash),
		Node: resp.Header.Get(nodeapi.HeaderNode), Taken: time.Now().UTC(), Size: n, SHA256: hex.EncodeToString(h.Sum(nil)),
	}
	meta, _ := json.MarshalIndent(info, "", "  ")
	if err := os.WriteFile(nodeapi.SnapshotInfoFile(out), append(meta, '\n'), 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return nil, err
	}
	return info, nil
}

// verifySnapshotFile checks a snapshot file's own checksum.
func verifySnapshotFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return nodeapi.CheckSnapshotHash(f, st.Size())
}

func etcdRestoreCommand() *cobra.Command {
	var f etcdFlags
	c := &cobra.Command{
		Use:   "restore FILE --node HOST[:PORT]",
		Short: "Restore etcd on a master from a snapshot of this cluster (disaster recovery)",
		Long: `Send FILE, a snapshot taken with kiln etcd snapshot save (or a master's
scheduled one, copied from its DATA/etcd-snapshots with its .json), to the master at --node, whose
etcd restarts from it as a cluster of that master alone. Every write since
the snapshot is lost.

FILE is checked first: its own sha256 (etcd's, at its end, and the one its
record FILE.json names), and FILE.json's CA hash against --cluster's: a
snapshot of another cluster, or one without FILE.json, is refused here and
nothing is sent. The node checks both again, and the snapshot once
received, before it keeps it; etcd checks it again before it restores.

On the node: the data before is kept in DATA/etcd.before-restore (the last
one only); etcd's revision moves a billion forward and is marked compacted,
so every watch lists again; the API server restarts. The other masters'
etcd, with their data of the cluster before, set it aside
(DATA/etcd.removed) and join the restored cluster as learners, one at a
time, within a minute of noticing.`,
		Example: `  kiln etcd restore etcd-2026-01-02.db --node 192.168.1.10`,
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			hp, err := f.hostPort()
			if err != nil {
				return err
			}
			cl, err := cluster.Load(f.clusterDir)
			if err != nil {
				return err
			}
			file := args[0]
			info, err := checkRestoreFile(file, cl.CAHash)
			if err != nil {
				return err
			}
			in, err := os.Open(file)
			if err != nil {
				return err
			}
			defer in.Close()
			header := http.Header{}
			header.Set(nodeapi.HeaderCAHash, info.CAHash)
			header.Set(nodeapi.HeaderSnapshotSHA256, info.SHA256)
			header.Set("Content-Type", "application/octet-stream")
			fmt.Fprintf(c.ErrOrStderr(), "kiln etcd: sending %s (%s, taken on %s at %s) to %s; etcd restarts from it\n", file, bounded.Size(info.Size), info.Node, info.Taken.Format(time.RFC3339), hp)
			return postToNode(c, hp, f.clusterDir, nodeapi.PathEtcdRestore, in, header, 30*time.Minute)
		},
	}
	f.register(c)
	return c
}

func etcdResetCommand() *cobra.Command {
	var f etcdFlags
	c := &cobra.Command{
		Use:   "reset --node HOST[:PORT]",
		Short: "Restart a master's etcd as a cluster of its own from its data, after the quorum is lost for good",
		Long: `When too many masters are gone for etcd to have a quorum (two of three, say),
and will not come back, restart the etcd of the master at --node as a
cluster of that member alone from its own data (etcd's --force-new-cluster,
what k3s calls a cluster reset). Writes it had not received are lost.

Refused while any master's etcd answers with a leader: then the cluster
has a quorum, and a master that lost its data rejoins by itself (remove
the members of machines gone for good with kiln etcd remove). The other
masters, when they return, set their data aside (DATA/etcd.removed) and
join the reset cluster as learners.`,
		Example: `  kiln etcd reset --node 192.168.1.10`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			hp, err := f.hostPort()
			if err != nil {
				return err
			}
			return postToNode(c, hp, f.clusterDir, nodeapi.PathEtcdReset, nil, nil, 15*time.Minute)
		},
	}
	f.register(c)
	return c
}

// postToNode sends a request that changes something to the node API at
// hostPort (body and header may be nil), waiting at most timeout, and
// prints its answer (printNodeAnswer).
func postToNode(c *cobra.Command, hostPort, clusterDir, path string, body io.Reader, header http.Header, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := nodeSend(ctx, hostPort, clusterDir, http.MethodPost, path, body, header)
	if err != nil {
		return err
	}
	return printNodeAnswer(c, hostPort, resp)
}

// printNodeAnswer prints a node's answer to a request that changes
// something, or returns it as the error when it is not 200 OK.
func printNodeAnswer(c *cobra.Command, hostPort string, resp *http.Response) error {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("node %s: %s", hostPort, bounded.Shorten(msg, 2048))
	}
	fmt.Fprintln(c.OutOrStdout(), msg)
	return nil
}

// checkRestoreFile checks a snapshot before it is sent: its record
// FILE.json says it is of the cluster whose CA hash is caHash, and the
// file is whole (etcd's sha256 at its end, and the size and sha256 the
// record names). It returns the record.
func checkRestoreFile(file, caHash string) (*nodeapi.SnapshotInfo, error) {
	recordPath := nodeapi.SnapshotInfoFile(file)
	data, err := os.ReadFile(recordPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s has no record %s saying which cluster it is of: kiln restores only snapshots it took (kiln etcd snapshot save, or a master's scheduled ones, each with its FILE.json)", file, recordPath)
	}
	if err != nil {
		return nil, err
	}
	var info nodeapi.SnapshotInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("%s: %w", recordPath, err)
	}
	if info.CAHash != caHash {
		return nil, fmt.Errorf("%s is a snapshot of cluster %s (CA %s), not of the cluster at --cluster (CA %s): refusing to restore it", file, bounded.Quote(info.Cluster), bounded.Quote(info.CAHash), caHash)
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := nodeapi.CheckSnapshotHash(f, st.Size()); err != nil {
		return nil, fmt.Errorf("%s: %w; take a new snapshot", file, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, st.Size())); err != nil {
		return nil, err
	}
	if sum := hex.EncodeToString(h.Sum(nil)); st.Size() != info.Size || sum != info.SHA256 {
		return nil, fmt.Errorf("%s (%d bytes, sha256 %s) is not the snapshot %s records (%d bytes, sha256 %s): it changed since it was saved", file, st.Size(), sum, recordPath, info.Size, bounded.Quote(info.SHA256))
	}
	return &info, nil
}
