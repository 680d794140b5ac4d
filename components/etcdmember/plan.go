package etcdmember

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kiln/internal/ctxutil"
)

// StartOptions describe a member that has no data yet.
type StartOptions struct {
	JoinOptions
	// Bootstrap: the member may start a new cluster when no peer answers
	// (kiln: the first of controlPlane.masters, or the only master).
	Bootstrap bool
	// Grace is how long a member that may bootstrap looks for running
	// peers first; zero: DefaultGrace.
	Grace time.Duration
}

// Plan is how a member without data starts.
type Plan struct {
	// New: it starts a new cluster of itself alone (--initial-cluster
	// NAME=PEER_URL, --initial-cluster-state=new).
	New bool
	// Joined is, when New is false, the cluster it joins
	// (--initial-cluster-state=existing).
	Joined
}

// PlanStart decides how a member without data starts; cli is a client of
// the other masters' etcd (nil: there are none, and the member starts a
// new cluster).
//
// When an etcd of the other masters answers, the member Joins its
// cluster. When none answers, a member that may bootstrap keeps looking
// for opts.Grace, then starts a new cluster; any other member waits for
// one, trying every opts.Retry. Once a peer has answered, or accepted a
// connection on its etcd client port, the member never starts a cluster
// of its own: that would be a second cluster beside the first. PlanStart
// returns when it has decided, or when ctx ends.
func PlanStart(ctx context.Context, cli *clientv3.Client, opts StartOptions) (Plan, error) {
	if cli == nil {
		return Plan{New: true}, nil
	}
	grace := opts.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	peers := strings.Join(cli.Endpoints(), ", ")
	begin := time.Now()
	var (
		seen, toldWaiting bool
		lastErr, lastMute string
	)
	for {
		r := reachPeers(ctx, cli)
		if r.answering || r.listening {
			seen = true
		}
		switch {
		case r.answering:
			j, err := Join(ctx, cli, opts.JoinOptions)
			if err == nil {
				return Plan{Joined: j}, nil
			}
			if ctx.Err() != nil {
				return Plan{}, err
			}
			if msg := err.Error(); msg != lastErr {
				lastErr = msg
				logf(opts.Log, "%s; trying again every %s", msg, opts.retry())
			}
		case r.listening:
			// An etcd runs there (or is starting) but does not answer
			// this master: never found a second cluster beside it.
			if r.listeningAt != lastMute {
				lastMute = r.listeningAt
				logf(opts.Log, "etcd at %s accepts connections but does not answer a status request (still starting, or the masters do not share the etcd CA); waiting for it", r.listeningAt)
			}
		case opts.Bootstrap && !seen && time.Since(begin) >= grace:
			logf(opts.Log, "no master answers at %s after %s: starting a new etcd cluster", peers, grace.Round(time.Second))
			return Plan{New: true}, nil
		case !toldWaiting && opts.Bootstrap && !seen:
			toldWaiting = true
			logf(opts.Log, "looking for a running etcd at %s for up to %s before starting a new cluster (a first master restarted without its data must join its peers)", peers, grace.Round(time.Second))
		case !toldWaiting:
			toldWaiting = true
			logf(opts.Log, "waiting for a master with a running etcd at %s (only the first of controlPlane.masters starts a new cluster)", peers)
		}
		if err := ctxutil.Sleep(ctx, opts.retry()); err != nil {
			return Plan{}, fmt.Errorf("waiting for the etcd of the other masters: %w", err)
		}
	}
}

// reach is what the peers' endpoints do.
type reach struct {
	// answering: one answered a status request. A status request is
	// served by any member, a learner or one without quorum included:
	// a cluster exists, even if it cannot take a new member now.
	answering bool
	// listening: one accepts connections on its etcd client port
	// without answering; listeningAt is its URL.
	listening   bool
	listeningAt string
}

// reachPeers asks each of cli's endpoints for its status and, when it
// does not answer, whether it accepts a connection at all.
func reachPeers(ctx context.Context, cli *clientv3.Client) reach {
	var (
		mu sync.Mutex
		r  reach
		wg sync.WaitGroup
	)
	for _, ep := range cli.Endpoints() {
		wg.Go(func() {
			if memberStatus(ctx, cli, []string{ep}) != nil {
				mu.Lock()
				r.answering = true
				mu.Unlock()
				return
			}
			u, err := url.Parse(ep)
			if err != nil {
				return
			}
			d := net.Dialer{Timeout: statusTimeout}
			conn, err := d.DialContext(ctx, "tcp", u.Host)
			if err != nil {
				return
			}
			conn.Close()
			mu.Lock()
			if !r.listening || ep < r.listeningAt {
				r.listening, r.listeningAt = true, ep
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return r
}
