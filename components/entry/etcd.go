package entry

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/storage/datadir"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"google.golang.org/grpc/grpclog"

	"kiln/components/etcdmember"
)

// walSegmentBytes is the size etcd preallocates for each WAL file (64 MB
// upstream). etcd keeps the current file and the next one ready; on a
// diskless master they live in tmpfs, that is in RAM, so upstream's size
// costs 128 MB of a small node's memory. A small cluster's writes fill
// 16 MB segments slowly enough; files written with the old size are read
// as they are.
const walSegmentBytes = 16 << 20

// EtcdVersion is the version of the embedded etcd server.
var EtcdVersion = version.Version

// etcdFlags are runEtcd's flags.
type etcdFlags struct {
	configFile string
	// The other masters' etcd, for a cluster of several masters.
	peers                 string
	bootstrap             bool
	bootstrapGrace        time.Duration
	clientCert, clientKey string
	trustedCA             string
}

// runEtcd starts embedded etcd from an etcd configuration file (the same YAML
// format as upstream etcd's --config-file) and serves until SIGTERM/SIGINT.
//
// With --peers (the other masters' client URLs), a member without data
// first looks for their cluster and joins it as a learner; see
// etcdmember.PlanStart. A member with data restarts as it was.
func runEtcd(args []string) int {
	// gRPC logs a warning at every failed connection attempt; the client
	// of the peers makes one every few seconds while a master waits for
	// them, and says what it waits for itself. Keep gRPC's errors only.
	// (Process-wide, so set before anything uses gRPC.)
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	return serveEtcd(args, sigs)
}

// serveEtcd is runEtcd until the first signal on sigs.
func serveEtcd(args []string, sigs <-chan os.Signal) int {
	var f etcdFlags
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	fs.StringVar(&f.configFile, "config-file", "", "path to the etcd configuration file (YAML, upstream etcd format)")
	fs.StringVar(&f.peers, "peers", "", "comma-separated client URLs of the other masters' etcd; empty: this master is the only one")
	fs.BoolVar(&f.bootstrap, "bootstrap", false, "with --peers: this master may start a new cluster when no peer answers")
	fs.DurationVar(&f.bootstrapGrace, "bootstrap-grace", etcdmember.DefaultGrace, "with --bootstrap: how long to look for running peers before starting a new cluster")
	fs.StringVar(&f.clientCert, "peer-client-cert", "", "with --peers: client certificate file to reach the peers' etcd with")
	fs.StringVar(&f.clientKey, "peer-client-key", "", "with --peers: key file of --peer-client-cert")
	fs.StringVar(&f.trustedCA, "peer-trusted-ca", "", "with --peers: CA certificate file the peers' serving certificates chain to")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if f.configFile == "" {
		return usageError("etcd", errors.New("--config-file is required"))
	}
	if f.peers != "" && (f.clientCert == "" || f.clientKey == "" || f.trustedCA == "") {
		return usageError("etcd", errors.New("--peers needs --peer-client-cert, --peer-client-key and --peer-trusted-ca to reach the peers"))
	}
	wal.SegmentSizeBytes = walSegmentBytes
	cfg, err := embed.ConfigFromFile(f.configFile)
	if err != nil {
		return usageError("etcd", fmt.Errorf("reading %s: %w", f.configFile, err))
	}

	// The first signal on sigs ends ctx, whatever serveEtcd waits for then;
	// its cause names the signal.
	ctx, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	go func() {
		select {
		case s := <-sigs:
			stop(fmt.Errorf("%v", s))
		case <-ctx.Done():
		}
	}()
	// stopped reports the stop: "etcd: terminated before ready, stopping".
	stopped := func(when string) int {
		fmt.Fprintf(os.Stderr, "etcd: %v%s, stopping\n", context.Cause(ctx), when)
		return 0
	}

	var peers *clientv3.Client
	if f.peers != "" {
		tlsConfig, err := etcdmember.ClientTLS(f.clientCert, f.clientKey, f.trustedCA)
		if err != nil {
			return usageError("etcd", err)
		}
		peers, err = etcdmember.NewClient(strings.Split(f.peers, ","), tlsConfig)
		if err != nil {
			return usageError("etcd", err)
		}
		defer peers.Close()
	}
	log := prefixWriter{w: os.Stderr, prefix: "etcd: "}
	if !hasEtcdData(cfg) && peers != nil {
		plan, err := etcdmember.PlanStart(ctx, peers, etcdmember.StartOptions{
			JoinOptions: etcdmember.JoinOptions{Name: cfg.Name, PeerURL: cfg.AdvertisePeerUrls[0].String(), Log: log},
			Bootstrap:   f.bootstrap,
			Grace:       f.bootstrapGrace,
		})
		switch {
		case ctx.Err() != nil:
			return stopped(" before start")
		case err != nil:
			fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
			return 1
		case !plan.New:
			fmt.Fprintf(os.Stderr, "etcd: joining the cluster as member %x: %s\n", plan.ID, plan.InitialCluster)
			cfg.InitialCluster = plan.InitialCluster
			cfg.ClusterState = embed.ClusterStateFlagExisting
		}
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: start: %v\n", err)
		return 1
	}
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintln(os.Stderr, "etcd: ready to serve client requests")
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		e.Close()
		return 1
	case <-ctx.Done():
		e.Close()
		return stopped(" before ready")
	}
	// A learner (just joined, or restarted before its promotion) votes
	// once promoted; the API server on this master waits for that (the
	// readiness probe). The peers promote it: a learner refuses the
	// request itself.
	if e.Server.IsLearner() {
		if peers == nil {
			fmt.Fprintln(os.Stderr, "etcd: this member is a learner and has no --peers to ask for its promotion: promote it from a voting member")
		} else {
			go func() {
				if err := etcdmember.Promote(ctx, peers, uint64(e.Server.MemberID()), log); err != nil && ctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
				}
			}()
		}
	}
	select {
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		e.Close()
		return 1
	case <-ctx.Done():
		done := make(chan struct{})
		go func() { e.Close(); close(done) }()
		code := stopped("")
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			fmt.Fprintln(os.Stderr, "etcd: close timed out")
		}
		return code
	}
}

// hasEtcdData reports whether the data dir holds a member already (its
// write-ahead log): then etcd restarts from it and ignores its initial
// cluster.
func hasEtcdData(cfg *embed.Config) bool {
	dir := cfg.WalDir
	if dir == "" {
		dir = datadir.ToWALDir(cfg.Dir)
	}
	return wal.Exist(dir)
}

// prefixWriter prefixes each Write (etcdmember writes a line at a time).
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}
