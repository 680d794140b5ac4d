// Package etcdmember manages the membership of kiln's etcd cluster, a
// cluster of one embedded etcd per master: a master without data joins the
// running members as a learner and is promoted once it has caught up
// (Join, Promote, PlanStart); members are listed with their health (List)
// and removed only when the cluster keeps its quorum (Remove); the
// database is saved to a snapshot that can be checked without etcd
// (Snapshot, VerifySnapshot). For disaster recovery, a member restores a
// snapshot as a cluster of itself alone before etcd starts
// (ApplyPendingRestore), a member whose data is no longer its cluster's
// sets it aside and joins again (Peers.Displaced), and snapshots are
// taken on a schedule (Schedule).
//
// It talks to running etcd through its client (go.etcd.io/etcd/client/v3)
// only, and restores with etcdutl, offline: the etcd entry point
// (components/entry) and kiln's node API both use it.
package etcdmember

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"kiln/internal/ctxutil"
)

// Timeouts of one request. A client's requests wait for an endpoint to
// answer until their context ends, so every request gets a deadline.
const (
	// callTimeout bounds a membership request: it goes through raft, so
	// it waits for a leader (one election: about a second).
	callTimeout = 5 * time.Second
	// statusTimeout bounds the status request that says whether a member
	// answers; a member that takes longer counts as not answering.
	statusTimeout = 2 * time.Second
	// removeWait is how long Remove waits while etcd refuses for now:
	// twice the 5 s etcd wants its members connected.
	removeWait = 10 * time.Second
	// dialTimeout bounds one connection attempt to an endpoint.
	dialTimeout = 5 * time.Second
)

// NewClient makes a client of the etcd members at endpoints (client URLs,
// https://ADDR:2379), authenticated with tlsConfig (see ClientTLS). It
// does not wait for a connection: each request waits for an endpoint
// that answers until its context ends. Close it when done.
func NewClient(endpoints []string, tlsConfig *tls.Config) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("etcd client: no endpoints: give the client URLs of at least one member")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  tlsConfig,
		DialTimeout:          dialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// The client logs every retry against an endpoint that does not
		// answer; this package reports what it waits for itself.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}

// ClientTLS is the TLS configuration of an etcd client: the client
// certificate and key files (the peers require one signed by the etcd CA)
// and the etcd CA's certificate file, which the members' serving
// certificates must chain to. The certificate is loaded again at each
// handshake, as etcd's own clients do, so a long-lived client (the etcd
// entry point's of its peers) uses the one the node renewed in place
// (components.Cert); the one loaded now stands in if a load fails.
func ClientTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("etcd client certificate %s: %w", certFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("etcd CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("etcd CA %s: no PEM certificate in it", caFile)
	}
	return &tls.Config{
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
				return &c, nil
			}
			return &cert, nil
		},
		RootCAs:    pool,
		MinVersion: tls.VersionTLS12,
	}, nil
}

// Member is one member of the etcd cluster, as List reports it.
type Member struct {
	ID uint64
	// Name is the member's --name (kiln: the node name); empty until the
	// member first starts.
	Name       string
	PeerURLs   []string
	ClientURLs []string
	// Learner: a member that receives the log but does not vote yet.
	Learner bool
	// Healthy: it answered a status request on one of its client URLs
	// within a couple of seconds.
	Healthy bool
	// Leader: the member the healthy members name as raft leader.
	Leader bool
}

// Started reports whether the member has ever started: a member added
// but not started has neither a name nor client URLs.
func (m Member) Started() bool { return m.Name != "" || len(m.ClientURLs) > 0 }

// String names the member the way kiln's messages do: "NAME (ID)", or
// the peer URL for a member that never started.
func (m Member) String() string {
	if m.Name != "" {
		return fmt.Sprintf("%s (%x)", m.Name, m.ID)
	}
	return fmt.Sprintf("unstarted member %x at %s", m.ID, strings.Join(m.PeerURLs, ","))
}

// List lists the cluster's members, by name, each with whether it
// answers and which one leads. It needs the cluster's quorum (the list is read
// through raft, so it is current).
func List(ctx context.Context, cli *clientv3.Client) ([]Member, error) {
	resp, err := call(ctx, cli, func(ctx context.Context) (*clientv3.MemberListResponse, error) {
		return cli.MemberList(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("listing etcd members at %s: %w", strings.Join(cli.Endpoints(), ","), err)
	}
	members := make([]Member, len(resp.Members))
	statuses := make([]*clientv3.StatusResponse, len(resp.Members))
	var wg sync.WaitGroup
	for i, m := range resp.Members {
		members[i] = Member{
			ID: m.ID, Name: m.Name, Learner: m.IsLearner,
			PeerURLs: slices.Clone(m.PeerURLs), ClientURLs: slices.Clone(m.ClientURLs),
		}
		wg.Go(func() { statuses[i] = memberStatus(ctx, cli, m.ClientURLs) })
	}
	wg.Wait()
	// The leader is the one named by the answer of the latest term: an
	// answer of an older term may name a leader that has stepped down.
	var leader, term uint64
	for i, st := range statuses {
		if st == nil {
			continue
		}
		members[i].Healthy = true
		if st.RaftTerm >= term {
			leader, term = st.Leader, st.RaftTerm
		}
	}
	for i := range members {
		members[i].Leader = leader != 0 && members[i].ID == leader
	}
	slices.SortFunc(members, func(a, b Member) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
	return members, nil
}

// memberStatus asks the member at urls for its status; nil when none of them
// answers within statusTimeout.
func memberStatus(ctx context.Context, cli *clientv3.Client, urls []string) *clientv3.StatusResponse {
	for _, u := range urls {
		sctx, cancel := context.WithTimeout(ctx, statusTimeout)
		st, err := cli.Status(sctx, u)
		cancel()
		if err == nil {
			return st
		}
	}
	return nil
}

// Remove removes the member named name (or, for a member that never
// started and so has no name, its ID in hex) from the cluster.
//
// It refuses when the cluster would lose its quorum: after the removal,
// the voting members that answer must still be a majority of the voting
// members left. Removing a learner is always allowed (learners do not
// vote).
func Remove(ctx context.Context, cli *clientv3.Client, name string) error {
	members, err := List(ctx, cli)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(members, func(m Member) bool {
		return m.Name == name || (m.Name == "" && fmt.Sprintf("%x", m.ID) == strings.ToLower(name))
	})
	if i < 0 {
		return fmt.Errorf("no etcd member named %q; the members are: %s", name, describe(members))
	}
	target := members[i]
	if !target.Learner {
		if err := checkQuorum(target, members); err != nil {
			return err
		}
	}
	// etcd refuses for a few seconds after a member (re)connected; the
	// check above says the cluster keeps its quorum, so wait that out.
	deadline := time.Now().Add(removeWait)
	for tried := false; ; tried = true {
		_, err = call(ctx, cli, func(ctx context.Context) (*clientv3.MemberRemoveResponse, error) {
			return cli.MemberRemove(ctx, target.ID)
		})
		switch {
		case err == nil, tried && isNotFound(err):
			// Gone: removed now, or by a try whose answer was lost.
			return nil
		case (refusedForNow(err) || unsettled(err)) && ctx.Err() == nil && time.Now().Before(deadline):
			if err := ctxutil.Sleep(ctx, time.Second); err != nil {
				return fmt.Errorf("removing etcd member %s: %w", target, err)
			}
		case refusedForNow(err):
			return fmt.Errorf("removing etcd member %s: %w (%s); try again once the members have been up a while", target, err, whyRefused)
		default:
			return fmt.Errorf("removing etcd member %s: %w", target, err)
		}
	}
}

// checkQuorum says why removing the voting member target from members
// would leave the cluster without quorum, or nil when it would not.
func checkQuorum(target Member, members []Member) error {
	voters, answering := 0, 0
	for _, m := range members {
		if m.Learner {
			continue
		}
		voters++
		if m.ID != target.ID && m.Healthy {
			answering++
		}
	}
	left := voters - 1
	if left == 0 {
		return fmt.Errorf("refusing to remove %s: it is the only voting member, and the cluster's data would go with it", nameOrID(target))
	}
	if need := left/2 + 1; answering < need {
		return fmt.Errorf("refusing to remove %s: %d voting members, %d of the other %d answer%s; after removal %d voting members need %d answering (quorum). Bring a member back first",
			nameOrID(target), voters, answering, left, verbS(answering), left, need)
	}
	return nil
}

func nameOrID(m Member) string {
	if m.Name != "" {
		return m.Name
	}
	return fmt.Sprintf("%x", m.ID)
}

// verbS makes "answer" agree with a count: "1 answers", "2 answer".
func verbS(n int) string {
	if n == 1 {
		return "s"
	}
	return ""
}

// describe lists members for a message: "a (1), b (2, learner, not answering)".
func describe(members []Member) string {
	if len(members) == 0 {
		return "none"
	}
	parts := make([]string, len(members))
	for i, m := range members {
		var notes []string
		if m.Learner {
			notes = append(notes, "learner")
		}
		if !m.Healthy {
			notes = append(notes, "not answering")
		}
		parts[i] = m.String()
		if len(notes) > 0 {
			parts[i] += " [" + strings.Join(notes, ", ") + "]"
		}
	}
	return strings.Join(parts, ", ")
}

// logf writes one line to w (nil: nowhere) with a single Write, so a
// writer that prefixes each Write prefixes each line.
func logf(w io.Writer, format string, args ...any) {
	if w == nil {
		return
	}
	_, _ = io.WriteString(w, fmt.Sprintf(format, args...)+"\n")
}

// isNotFound reports an etcd "member not found" error.
func isNotFound(err error) bool { return errors.Is(err, rpctypes.ErrMemberNotFound) }
