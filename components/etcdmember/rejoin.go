package etcdmember

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Self is a member with data, as its data says: its ID and its
// cluster's.
type Self struct {
	ID, ClusterID uint64
	Name          string
	// RestoredAt is when this member's cluster was restored from a
	// snapshot (its RestoredKey, or the marker of its restored data dir
	// not yet written there); zero: never.
	RestoredAt time.Time
}

// Peers are the other masters' etcd, each asked on its own: Displaced must
// know which master says what.
type Peers struct {
	endpoints []string
	tlsConfig *tls.Config
}

// NewPeers describes the peers at endpoints (client URLs of the other
// masters' etcd), reached with tlsConfig.
func NewPeers(endpoints []string, tlsConfig *tls.Config) *Peers {
	return &Peers{endpoints: endpoints, tlsConfig: tlsConfig}
}

// Displaced says why self's data is no longer its cluster's, or "" when
// nothing says so. A member whose data is displaced cannot start or keep
// running as it is; it must set its data aside and join the cluster its
// peers run from nothing (PlanStart). It is displaced when a peer answers:
//
//   - in self's cluster, with a list of members that lacks self: self was
//     removed (the list is read through the peer's quorum, so it is the
//     cluster's, not one member's memory);
//   - in another cluster that was restored from a snapshot after self's
//     own was (RestoredKey, with that cluster's ID) and that has no
//     started member named as self: a restore on another master replaced
//     self's cluster.
//
// Nothing else displaces a member's data: a peer in another cluster that
// was not restored (a second cluster started by mistake, or a master
// that lost its data and started one alone) says nothing about which
// data is right, and both are kept; note says so, for the log.
func (p *Peers) Displaced(ctx context.Context, self Self) (reason, note string) {
	// All at once: a peer that is down costs a status timeout. A client
	// each time: one kept would wait out gRPC's growing reconnection
	// delay after a peer was down, and notice its return late.
	reasons, notes := make([]string, len(p.endpoints)), make([]string, len(p.endpoints))
	var wg sync.WaitGroup
	for i, ep := range p.endpoints {
		wg.Go(func() {
			cli, err := NewClient([]string{ep}, p.tlsConfig)
			if err != nil {
				return
			}
			defer cli.Close()
			reasons[i], notes[i] = displacedBy(ctx, cli, self)
		})
	}
	wg.Wait()
	for i := range reasons {
		if reasons[i] != "" {
			return reasons[i], ""
		}
		note = cmp.Or(note, notes[i])
	}
	return "", note
}

// displacedBy is Displaced's question to one peer.
func displacedBy(ctx context.Context, cli *clientv3.Client, self Self) (reason, note string) {
	ep := cli.Endpoints()[0]
	if memberStatus(ctx, cli, []string{ep}) == nil {
		return "", ""
	}
	list, err := call(ctx, cli, func(ctx context.Context) (*clientv3.MemberListResponse, error) {
		return cli.MemberList(ctx)
	})
	if err != nil {
		return "", "" // a learner, or a member without quorum: it does not know
	}
	cluster := list.Header.ClusterId
	if cluster == self.ClusterID {
		if !slices.ContainsFunc(list.Members, func(m *pb.Member) bool { return m.ID == self.ID }) {
			return fmt.Sprintf("member %x was removed from cluster %x: the members at %s are %s", self.ID, cluster, ep, memberNames(list.Members)), ""
		}
		return "", ""
	}
	if slices.ContainsFunc(list.Members, func(m *pb.Member) bool { return m.Name == self.Name && started(m) }) {
		return "", ""
	}
	if restored, ok := restoredAt(ctx, cli, cluster); ok && restored.At.After(self.RestoredAt) {
		return fmt.Sprintf("the etcd at %s is cluster %x, restored from a snapshot on %s at %s, which replaced this member's cluster %x; its members are %s",
			ep, cluster, restored.Node, restored.At.Format(time.RFC3339), self.ClusterID, memberNames(list.Members)), ""
	}
	return "", fmt.Sprintf("the etcd at %s is another cluster (%x, members %s) than this member's (%x), and was not restored after it: keeping this member's data; if this member should join that cluster, move %s's data dir aside", ep, cluster, memberNames(list.Members), self.ClusterID, self.Name)
}

// restoredAt reads the restore marker of the cluster cli reaches; ok
// only for a marker written in that cluster (a copy of the key in a
// snapshot names the cluster it was taken from).
func restoredAt(ctx context.Context, cli *clientv3.Client, cluster uint64) (RestoreMarker, bool) {
	resp, err := call(ctx, cli, func(ctx context.Context) (*clientv3.GetResponse, error) {
		return cli.Get(ctx, RestoredKey)
	})
	if err != nil || len(resp.Kvs) == 0 {
		return RestoreMarker{}, false
	}
	m, ok := ParseRestoreMarker(resp.Kvs[0].Value)
	if !ok || m.ClusterID != fmt.Sprintf("%x", cluster) {
		return RestoreMarker{}, false
	}
	return m, true
}

func memberNames(ms []*pb.Member) string {
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = member(m)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
