package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
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
		Short: "The masters' etcd: members, removing one, snapshots",
		Long: `Manage the cluster's etcd through a master's node API (port 10260, the
cluster's admin certificate): etcd itself is never exposed to the host.`,
	})
	snap := groupCommand(&cobra.Command{Use: "snapshot", Short: "etcd snapshots"})
	snap.AddCommand(etcdSnapshotSaveCommand())
	c.AddCommand(etcdMembersCommand(), etcdRemoveCommand(), snap)
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
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, err := nodeDo(ctx, hp, f.clusterDir, http.MethodPost, nodeapi.PathEtcdRemove+args[0])
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			msg := strings.TrimSpace(string(body))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("node %s: %s", hp, bounded.Shorten(msg, 1024))
			}
			fmt.Fprintln(c.OutOrStdout(), msg)
			return nil
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
	if err := os.WriteFile(out+".json", append(meta, '\n'), 0o600); err != nil {
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
