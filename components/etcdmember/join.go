package etcdmember

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"kiln/internal/ctxutil"
)

// Default waits of Join, Promote and PlanStart.
const (
	// DefaultRetry is how often Join and PlanStart try again while
	// another member joins, or while no master answers.
	DefaultRetry = 2 * time.Second
	// DefaultGrace is how long a master allowed to bootstrap looks for
	// running peers before it starts a new cluster: a first master
	// restarted without its data must join the cluster its peers kept,
	// not found a second one.
	DefaultGrace = 20 * time.Second
	// promoteRetry is how often Promote asks again while the learner
	// catches up with the leader.
	promoteRetry = time.Second
)

// JoinOptions describe the member that joins.
type JoinOptions struct {
	// Name is the member's name (etcd's --name; kiln: the node name).
	Name string
	// PeerURL is the URL the other members reach it at (etcd's
	// --initial-advertise-peer-urls), https://ADDR:2380.
	PeerURL string
	// Log gets one line per event worth telling (a stale member
	// replaced, a wait); nil: nowhere.
	Log io.Writer
	// Retry is the wait between tries; zero: DefaultRetry.
	Retry time.Duration
}

func (o JoinOptions) retry() time.Duration {
	if o.Retry > 0 {
		return o.Retry
	}
	return DefaultRetry
}

// Joined is this member's place in the cluster it joins.
type Joined struct {
	// ID is the member's ID, given by the cluster when it was added.
	ID uint64
	// InitialCluster is etcd's --initial-cluster for its first start
	// (with --initial-cluster-state=existing): every member, this one
	// included, as NAME=PEER_URL.
	InitialCluster string
	// Learner: the member joins as a learner; Promote it once it has
	// started.
	Learner bool
}

// Join adds the member described by opts to the cluster cli reaches, as a
// learner: a learner catches up with the leader without counting for the
// quorum, so a slow first sync cannot stall the cluster. Start etcd with
// the returned InitialCluster and cluster state "existing", then Promote
// it.
//
// A member with the same name or peer URL is this machine's earlier life,
// come back without its data: Join removes it first, unless it answers
// (then another machine uses this name or address, and Join refuses) or
// it was added but never started (an earlier Join whose member did not
// start: Join returns it again instead of adding a second one).
//
// etcd lets one learner in at a time: while another member is a learner,
// Join waits, trying every opts.Retry until ctx ends.
func Join(ctx context.Context, cli *clientv3.Client, opts JoinOptions) (Joined, error) {
	if opts.Name == "" || opts.PeerURL == "" {
		return Joined{}, errors.New("joining etcd: the member's name and peer URL are both required")
	}
	logged := map[string]bool{}
	once := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		if !logged[line] {
			logged[line] = true
			logf(opts.Log, "%s", line)
		}
	}
	for {
		list, err := call(ctx, cli, func(ctx context.Context) (*clientv3.MemberListResponse, error) {
			return cli.MemberList(ctx)
		})
		if err != nil {
			return Joined{}, fmt.Errorf("joining etcd: listing the members at %s: %w", strings.Join(cli.Endpoints(), ","), err)
		}
		var learner *pb.Member
		replaced := false
		for _, m := range list.Members {
			mine := m.Name == opts.Name || slices.Contains(m.PeerURLs, opts.PeerURL)
			switch {
			case mine && !started(m) && slices.Equal(m.PeerURLs, []string{opts.PeerURL}):
				return Joined{ID: m.ID, InitialCluster: initialCluster(list.Members, m.ID, opts.Name), Learner: m.IsLearner}, nil
			case mine:
				err := replaceStale(ctx, cli, m, opts, once)
				switch {
				case err == nil:
				case refusedForNow(err):
					once("waiting: %v: %s", err, whyRefused)
				case unsettled(err) && ctx.Err() == nil:
					once("waiting: %v; another membership change may have been under way", err)
				default:
					return Joined{}, err
				}
				if err != nil {
					if err := ctxutil.Sleep(ctx, opts.retry()); err != nil {
						return Joined{}, fmt.Errorf("joining etcd: %w", err)
					}
				}
				replaced = true
			case m.IsLearner:
				learner = m
			}
		}
		if replaced {
			continue // the members changed: look at them again
		}
		if learner != nil {
			once("waiting: %s is joining as a learner (one at a time)", member(learner))
			if err := ctxutil.Sleep(ctx, opts.retry()); err != nil {
				return Joined{}, fmt.Errorf("joining etcd: %w", err)
			}
			continue
		}
		add, err := call(ctx, cli, func(ctx context.Context) (*clientv3.MemberAddResponse, error) {
			return cli.MemberAddAsLearner(ctx, []string{opts.PeerURL})
		})
		switch {
		case err == nil:
			return Joined{ID: add.Member.ID, InitialCluster: initialCluster(add.Members, add.Member.ID, opts.Name), Learner: true}, nil
		case errors.Is(err, rpctypes.ErrTooManyLearners):
			// Another member became a learner since the list.
			once("waiting: another member is joining as a learner (one at a time)")
		case refusedForNow(err):
			once("waiting: etcd refuses a new member for now (%v): %s", err, whyRefused)
		case unsettled(err) && ctx.Err() == nil:
			// etcd makes one membership change at a time and drops a
			// change proposed while another is under way, so the request
			// times out; or the leader changed. It may have been made:
			// the next list tells.
			once("waiting: adding %s as a learner did not complete (%v); another membership change may have been under way", opts.Name, err)
		case errors.Is(err, rpctypes.ErrPeerURLExist):
			// Added since the list: by an earlier try whose answer was
			// lost, or by another machine with this address. The next
			// list tells.
		default:
			return Joined{}, fmt.Errorf("joining etcd: adding %s at %s as a learner: %w", opts.Name, opts.PeerURL, err)
		}
		if err := ctxutil.Sleep(ctx, opts.retry()); err != nil {
			return Joined{}, fmt.Errorf("joining etcd: %w", err)
		}
	}
}

// replaceStale removes m, a member with this machine's name or peer URL,
// unless it answers: then it is another machine, not an earlier life.
// The line it logs is logged once however often it is called.
func replaceStale(ctx context.Context, cli *clientv3.Client, m *pb.Member, opts JoinOptions, once func(string, ...any)) error {
	if st := memberStatus(ctx, cli, m.ClientURLs); st != nil {
		return fmt.Errorf("joining etcd: member %s answers at %s: another machine runs etcd with this name (%s) or peer URL (%s); give each master its own node name and address",
			member(m), strings.Join(m.ClientURLs, ","), opts.Name, opts.PeerURL)
	}
	once("replacing stale member %s: this machine came back without its data", member(m))
	_, err := call(ctx, cli, func(ctx context.Context) (*clientv3.MemberRemoveResponse, error) {
		return cli.MemberRemove(ctx, m.ID)
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("joining etcd: removing the stale member %s: %w", member(m), err)
	}
	return nil
}

// started reports whether m has ever started (it has a name and client
// URLs from then on).
func started(m *pb.Member) bool { return m.Name != "" || len(m.ClientURLs) > 0 }

func member(m *pb.Member) string {
	return Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs}.String()
}

// initialCluster is etcd's --initial-cluster for member self, named name,
// joining members. etcd checks it against the cluster: it must hold every
// member (started or not) with its peer URLs. Only self's name matters
// (etcd finds itself by it); a member that never started has no name yet
// and gets a placeholder, unique by its ID.
func initialCluster(members []*pb.Member, self uint64, name string) string {
	var pairs []string
	for _, m := range members {
		n := m.Name
		switch {
		case m.ID == self:
			n = name
		case n == "":
			n = fmt.Sprintf("unstarted-%x", m.ID)
		}
		for _, u := range m.PeerURLs {
			pairs = append(pairs, n+"="+u)
		}
	}
	slices.Sort(pairs)
	return strings.Join(pairs, ",")
}

// Promote makes the learner id a voting member. The leader refuses while
// the learner has not caught up with its log; Promote asks again every
// second until it is accepted or ctx ends, and logs one line then. cli
// must reach voting members: a learner serves almost no requests.
func Promote(ctx context.Context, cli *clientv3.Client, id uint64, log io.Writer) error {
	var last string
	for {
		_, err := call(ctx, cli, func(ctx context.Context) (*clientv3.MemberPromoteResponse, error) {
			return cli.MemberPromote(ctx, id)
		})
		switch {
		case err == nil, errors.Is(err, rpctypes.ErrMemberNotLearner):
			// Not a learner: promoted now, or by an earlier try whose
			// answer was lost.
			logf(log, "member %x is a voting member", id)
			return nil
		case isNotFound(err):
			return fmt.Errorf("promoting etcd member %x: it is no longer a member of the cluster (removed?); restart it without its data to join again", id)
		case errors.Is(err, rpctypes.ErrMemberLearnerNotReady), refusedForNow(err):
			// Still catching up with the leader, or just connected.
		case ctx.Err() != nil:
			return fmt.Errorf("promoting etcd member %x: %w", id, ctx.Err())
		default:
			if msg := err.Error(); msg != last {
				last = msg
				logf(log, "promoting member %x: %v; trying again", id, err)
			}
		}
		if err := ctxutil.Sleep(ctx, promoteRetry); err != nil {
			return fmt.Errorf("promoting etcd member %x: %w", id, err)
		}
	}
}

// whyRefused explains refusedForNow's errors.
const whyRefused = "it changes its membership only while every voting member it needs has been connected for 5 s"

// refusedForNow reports etcd's refusals of a membership change that pass
// by themselves: etcd (with its default --strict-reconfig-check) changes
// the members only while the ones it needs for quorum have been connected
// for a few seconds, so right after a member joined, or while one is down.
func refusedForNow(err error) bool {
	return errors.Is(err, rpctypes.ErrUnhealthy) || errors.Is(err, rpctypes.ErrMemberNotEnoughStarted)
}

// unsettled reports an error that leaves a request's outcome unknown: it
// timed out, or etcd had no leader or changed it meanwhile. A membership
// change proposed while another one is under way is dropped by raft and
// times out this way too.
func unsettled(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable || ee.Code() == codes.DeadlineExceeded
	}
	if st, ok := status.FromError(err); ok {
		return st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded
	}
	return false
}

// call makes one request with callTimeout. A learner refuses most
// requests; the client sends each request to the next endpoint in turn,
// so a request a learner refused is tried once more per endpoint.
func call[T any](ctx context.Context, cli *clientv3.Client, do func(context.Context) (T, error)) (T, error) {
	var (
		t   T
		err error
	)
	for range len(cli.Endpoints()) {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		t, err = do(cctx)
		cancel()
		if err == nil || rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(rpctypes.ErrGRPCNotSupportedForLearner) {
			break
		}
	}
	return t, err
}
