package up

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kiln/components"
	"kiln/components/etcdmember"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
)

// etcdAPI serves a master's etcd paths of the node API (kiln etcd …):
// the members, removing one, a snapshot. etcd's own ports stay closed to
// the host; these answer only the cluster's admins, as the status does.
type etcdAPI struct{ env *components.Env }

// withEtcd adds the etcd paths to h on a master.
func withEtcd(env *components.Env, h http.Handler) http.Handler {
	if env.Config.Role != node.RoleMaster {
		return h
	}
	a := etcdAPI{env}
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("GET "+nodeapi.PathEtcdMembers, a.members)
	mux.HandleFunc("POST "+nodeapi.PathEtcdRemove+"{name}", a.remove)
	mux.HandleFunc("GET "+nodeapi.PathEtcdSnapshot, a.snapshot)
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

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
