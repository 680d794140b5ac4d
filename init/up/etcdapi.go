package up

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kiln/components"
	"kiln/components/etcdmember"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/init/supervisor"
	"kiln/internal/bounded"
)

// etcdAPI serves a master's etcd paths of the node API (kiln etcd …):
// the members, removing one, a snapshot, a restore from one, a reset.
// etcd's own ports stay closed to the host; these answer only the
// cluster's admins, as the status does.
type etcdAPI struct {
	env *components.Env
	sup restarter
}

// restarter is what the restore and the reset need of the supervisor:
// etcd applies both at its start.
type restarter interface {
	Restart(ctx context.Context, name string) error
	WaitReady(ctx context.Context, names ...string) error
}

// withEtcd adds the etcd paths to h on a master.
func withEtcd(env *components.Env, sup restarter, h http.Handler) http.Handler {
	if env.Config.Role != node.RoleMaster {
		return h
	}
	a := etcdAPI{env: env, sup: sup}
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("GET "+nodeapi.PathEtcdMembers, a.members)
	mux.HandleFunc("POST "+nodeapi.PathEtcdRemove+"{name}", a.remove)
	mux.HandleFunc("GET "+nodeapi.PathEtcdSnapshot, a.snapshot)
	mux.HandleFunc("POST "+nodeapi.PathEtcdRestore, a.restore)
	mux.HandleFunc("POST "+nodeapi.PathEtcdReset, a.reset)
	return mux
}

// client reaches this master's etcd first, and the other masters' when
// it does not answer.
func (a etcdAPI) client(endpoints []string) (*clientv3.Client, error) {
	cert, key, ca := components.EtcdClientFiles(a.env)
	tlsCfg, err := etcdmember.ClientTLS(cert, key, ca)
	if err != nil {
		return nil, err
	}
	return etcdmember.NewClient(endpoints, tlsCfg)
}

func (a etcdAPI) members(w http.ResponseWriter, r *http.Request) {
	cli, err := a.client(components.EtcdEndpoints(a.env))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	ms, err := etcdmember.List(ctx, cli)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	out := make([]nodeapi.EtcdMember, 0, len(ms))
	for _, m := range ms {
		out = append(out, nodeapi.EtcdMember{
			ID: fmt.Sprintf("%x", m.ID), Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs,
			Learner: m.Learner, Healthy: m.Healthy, Leader: m.Leader,
		})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func (a etcdAPI) remove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := node.CheckHostname(name); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cli, err := a.client(components.EtcdEndpoints(a.env))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := etcdmember.Remove(ctx, cli, name); err != nil {
		// A refusal (quorum, an unknown name) is the answer, with its
		// reason: nothing changed.
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	fmt.Fprintf(w, "removed etcd member %s\n", name)
}

// snapshot streams a snapshot of this master's own member (not another's:
// the operator chose this node).
func (a etcdAPI) snapshot(w http.ResponseWriter, r *http.Request) {
	cli, err := a.client(components.EtcdEndpoints(a.env)[:1])
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer cli.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set(nodeapi.HeaderCluster, a.env.Cluster.Name)
	h.Set(nodeapi.HeaderCAHash, a.env.Cluster.CAHash)
	h.Set(nodeapi.HeaderNode, a.env.NodeName)
	cw := &countingWriter{w: w}
	if _, err := etcdmember.Snapshot(r.Context(), cli, cw); err != nil {
		if cw.n == 0 {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		// The status (200) is sent: abort the connection, so the client
		// sees a broken transfer, not a short file that ends cleanly
		// (its check of etcd's appended sha256 would refuse it anyway).
		panic(http.ErrAbortHandler)
	}
}

// recovery lets one restore or reset run at a time on the node, whichever
// of its addresses' servers received it: both leave a file for etcd's
// next start and restart it.
var recovery sync.Mutex

// Bounds of a restore.
const (
	// maxRestoreBytes caps a snapshot received: etcd's database stops
	// at its quota (8 GiB at most, kiln sizes it to the node), and a
	// snapshot is the database.
	maxRestoreBytes = 9 << 30
	// recoveryWait bounds the restart of etcd after a restore or reset,
	// until it is ready (the restore copies the database first).
	recoveryWait = 10 * time.Minute
)

// restore receives a snapshot of this node's cluster, keeps it once
// verified for etcd's next start (etcdmember.ApplyPendingRestore), and
// restarts etcd, then the API server.
//
// The API server is restarted, not left to notice: the restore moves
// etcd's revision forward and marks it compacted, so its watches would
// fail and list again, but its watch cache and what it keeps in memory
// (leases, the endpoints it reconciles) would still be of before until
// then; a restart of a few seconds makes it start from the restored
// data at once. The controller-manager and the scheduler need no
// restart: their watches of the API server fail as "too old" and they
// list again.
func (a etcdAPI) restore(w http.ResponseWriter, r *http.Request) {
	switch ca := r.Header.Get(nodeapi.HeaderCAHash); {
	case ca == "":
		http.Error(w, "no cluster CA hash in the request ("+nodeapi.HeaderCAHash+"): send the snapshot with kiln etcd restore, which reads it from the snapshot's FILE.json", http.StatusBadRequest)
		return
	case ca != a.env.Cluster.CAHash:
		http.Error(w, fmt.Sprintf("the snapshot is of another cluster (CA %s); this node's cluster %s has CA %s: refusing it", bounded.Quote(ca), a.env.Cluster.Name, a.env.Cluster.CAHash), http.StatusConflict)
		return
	}
	if !recovery.TryLock() {
		http.Error(w, "another restore or reset of etcd is under way on this node; try again once it is done", http.StatusConflict)
		return
	}
	defer recovery.Unlock()
	dataDir := components.EtcdDataDir(a.env)
	files := etcdmember.Files{DataDir: dataDir}
	if err := os.MkdirAll(files.RecoveryDir(), 0o700); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	n, sum, err := receiveFile(files.Upload(), http.MaxBytesReader(w, r.Body, maxRestoreBytes))
	if err != nil {
		os.Remove(files.Upload())
		http.Error(w, fmt.Sprintf("receiving the snapshot: %v after %d bytes", err, n), http.StatusBadRequest)
		return
	}
	if want := r.Header.Get(nodeapi.HeaderSnapshotSHA256); want != "" && want != sum {
		os.Remove(files.Upload())
		http.Error(w, fmt.Sprintf("the snapshot received (%d bytes, sha256 %s) is not the one sent (sha256 %s): the transfer damaged it; send it again", n, sum, bounded.Quote(want)), http.StatusBadRequest)
		return
	}
	if err := etcdmember.AcceptSnapshot(dataDir); err != nil {
		http.Error(w, fmt.Sprintf("the snapshot received is damaged: %v", err), http.StatusBadRequest)
		return
	}
	// The client may hang up: the restart goes on.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), recoveryWait)
	defer cancel()
	if err := a.restartEtcd(ctx); err != nil {
		http.Error(w, fmt.Sprintf("the snapshot is kept (%s) and etcd restores it at its next start; %v", files.PendingSnapshot(), err), http.StatusInternalServerError)
		return
	}
	if _, err := os.Stat(files.Refused()); err == nil {
		http.Error(w, fmt.Sprintf("etcd refused the snapshot at its start (it is now %s; its log says why: kiln logs etcd) and runs from its data as it was", files.Refused()), http.StatusUnprocessableEntity)
		return
	}
	apiServer := "; kube-apiserver restarted, to start from the restored data"
	switch err := a.sup.Restart(ctx, node.ComponentAPIServer); {
	case errors.Is(err, supervisor.ErrUnknownService):
		apiServer = ""
	case err != nil:
		apiServer = fmt.Sprintf("; restarting kube-apiserver: %v", err)
	}
	fmt.Fprintf(w, "etcd on %s restored from the snapshot (%d bytes): a cluster of %s alone, its data before kept in %s%s. The other masters' etcd set their data aside and join it as learners when they notice (within a minute).\n",
		a.env.NodeName, n, a.env.NodeName, files.BeforeRestore(), apiServer)
}

// reset restarts etcd once with ForceNewCluster from its own data, for
// masters that lost their quorum for good. It refuses while any member
// (this one, or another master's) answers with a leader: then a quorum
// exists, and forcing a cluster of this member alone would split it.
func (a etcdAPI) reset(w http.ResponseWriter, r *http.Request) {
	if !recovery.TryLock() {
		http.Error(w, "another restore or reset of etcd is under way on this node; try again once it is done", http.StatusConflict)
		return
	}
	defer recovery.Unlock()
	cli, err := a.client(components.EtcdEndpoints(a.env))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer cli.Close()
	qctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	leader, ok := etcdmember.FindLeader(qctx, cli)
	cancel()
	if ok {
		http.Error(w, fmt.Sprintf("etcd at %s answers with a leader (member %x): the cluster has a quorum, and a reset is not needed (nor safe: this member's data may be behind it). A master back without its data joins by itself; remove the members gone for good with kiln etcd remove", leader.Endpoint, leader.Leader), http.StatusConflict)
		return
	}
	dataDir := components.EtcdDataDir(a.env)
	if _, err := os.Stat(filepath.Join(dataDir, "member", "wal")); err != nil {
		http.Error(w, fmt.Sprintf("no etcd data on %s to reset from (%v): restore a snapshot instead (kiln etcd restore)", a.env.NodeName, err), http.StatusConflict)
		return
	}
	if err := etcdmember.RequestReset(dataDir, "kiln etcd reset from "+r.RemoteAddr); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), recoveryWait)
	defer cancel()
	if err := a.restartEtcd(ctx); err != nil {
		http.Error(w, fmt.Sprintf("the reset is asked for (%s) and etcd applies it at its next start; %v", etcdmember.Files{DataDir: dataDir}.ResetMarker(), err), http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "etcd on %s restarted as a cluster of %s alone from its own data. The other masters' etcd set their data aside and join it as learners when they return.\n", a.env.NodeName, a.env.NodeName)
}

// restartEtcd restarts etcd and waits until it is ready (a voting
// member with a leader).
func (a etcdAPI) restartEtcd(ctx context.Context) error {
	if err := a.sup.Restart(ctx, node.ComponentEtcd); err != nil {
		return fmt.Errorf("restarting etcd: %w", err)
	}
	if err := a.sup.WaitReady(ctx, node.ComponentEtcd); err != nil {
		return fmt.Errorf("etcd restarted but is not ready: %w; see its log (kiln logs etcd)", err)
	}
	return nil
}

// receiveFile writes r to a new file at path, synced, and returns its
// size and sha256 (hex).
func receiveFile(path string, r io.Reader) (int64, string, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, hex.EncodeToString(h.Sum(nil)), err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
