package etcdmember

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
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
	// TLS is the client TLS of the peers (cli's). With it, a peer that
	// accepts connections but does not answer is asked for its
	// certificate: one this member's etcd CA did not sign is another
	// cluster's, and PlanStart ends with an error that says so instead
	// of waiting for it.
	TLS *tls.Config
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
		r := reachPeers(ctx, cli, opts.TLS)
		if r.answering || r.listening {
			seen = true
		}
		switch {
		case !r.answering && r.foreign != nil:
			// Another CA's etcd does not become this cluster's by
			// waiting: the image is wrong. The error is the run's last
			// line, which the console shows.
			return Plan{}, fmt.Errorf("the etcd at %s is another cluster's: its certificate is not signed by this master's etcd CA (%v). This master's image was built from another cluster directory than the masters at %s: build it from theirs (kiln build --cluster DIR). Nothing was changed: this master has no etcd data, and started and joined no cluster", r.listeningAt, r.foreign, peers)
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
	// foreign: the one at listeningAt presented a certificate this
	// member's CA did not sign (the handshake's error).
	foreign error
}

// reachPeers asks each of cli's endpoints for its status and, when it
// does not answer, whether it accepts a connection at all and, with
// tlsConfig, whether its certificate is of this member's CA.
func reachPeers(ctx context.Context, cli *clientv3.Client, tlsConfig *tls.Config) reach {
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
			foreign := foreignCA(ctx, conn, u.Hostname(), tlsConfig)
			conn.Close()
			mu.Lock()
			if !r.listening || ep < r.listeningAt {
				r.listening, r.listeningAt, r.foreign = true, ep, foreign
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return r
}

// foreignCA shakes hands over conn and returns the error when the peer's
// certificate is not signed by tlsConfig's CAs; nil for anything else (a
// peer still starting, a handshake cut short), and without tlsConfig.
func foreignCA(ctx context.Context, conn net.Conn, host string, tlsConfig *tls.Config) error {
	if tlsConfig == nil {
		return nil
	}
	cfg := tlsConfig.Clone()
	cfg.ServerName = host
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	err := tls.Client(conn, cfg).HandshakeContext(ctx)
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return err
	}
	return nil
}
