package entry

import (
	"context"
	"crypto/tls"
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
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"google.golang.org/grpc/grpclog"

	"kiln/components/etcdmember"
	"kiln/configs/nodeapi"
	"kiln/internal/ctxutil"
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
	// peerCheck is how often a member with peers asks them whether its
	// data is still its cluster's (etcdmember.Peers.Displaced): every
	// 30 s by default. Each check is a new TLS client per peer and two
	// reads through the quorum; every 10 s, on three 1-vCPU masters
	// under TCG, that load alone kept etcd's member list from answering
	// within a minute (TestHA, measured). A displaced member waits a
	// little longer to notice; nothing else does.
	peerCheck time.Duration
	// Scheduled snapshots: none without a directory (a diskless
	// master) or with a zero interval.
	snapshotDir      string
	snapshotInterval time.Duration
	snapshotKeep     int
	// The snapshots' records name the cluster.
	clusterName, caHash string
}

// runEtcd starts embedded etcd from an etcd configuration file (the same YAML
// format as upstream etcd's --config-file) and serves until SIGTERM/SIGINT.
//
// Before etcd starts, it applies what the node API left for it: a
// snapshot to restore (etcdmember.ApplyPendingRestore), and a reset
// (etcd's ForceNewCluster, once). With --peers (the other masters'
// client URLs), a member without data first looks for their cluster and
// joins it as a learner (etcdmember.PlanStart); a member with data
// restarts as it was, and keeps asking its peers whether its data is
// still its cluster's: a member removed from it, or whose cluster a
// restore on another master replaced, sets its data aside and joins
// again (etcdmember.Peers.Displaced). With --snapshot-dir it takes
// scheduled snapshots once it votes.
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
	fs.DurationVar(&f.peerCheck, "peer-check-interval", 30*time.Second, "with --peers: how often to ask the peers whether this member's data is still its cluster's")
	fs.StringVar(&f.snapshotDir, "snapshot-dir", "", "directory of the scheduled snapshots; empty: none (a diskless master)")
	fs.DurationVar(&f.snapshotInterval, "snapshot-interval", 0, "time between two scheduled snapshots; 0: none")
	fs.IntVar(&f.snapshotKeep, "snapshot-keep", 5, "how many scheduled snapshots to keep, the newest")
	fs.StringVar(&f.clusterName, "cluster-name", "", "the cluster's name, for the snapshots' records")
	fs.StringVar(&f.caHash, "ca-hash", "", "the cluster CA's hash, for the snapshots' records (a restore refuses another cluster's snapshot by it)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	switch {
	case f.configFile == "":
		return usageError("etcd", errors.New("--config-file is required"))
	case f.peers != "" && (f.clientCert == "" || f.clientKey == "" || f.trustedCA == ""):
		return usageError("etcd", errors.New("--peers needs --peer-client-cert, --peer-client-key and --peer-trusted-ca to reach the peers"))
	case f.peerCheck <= 0:
		return usageError("etcd", errors.New("--peer-check-interval must be positive"))
	case f.snapshotInterval < 0:
		return usageError("etcd", errors.New("--snapshot-interval must not be negative (0: no scheduled snapshots)"))
	case f.snapshotDir != "" && f.snapshotInterval > 0 && f.snapshotKeep < 1:
		return usageError("etcd", errors.New("--snapshot-keep must be at least 1"))
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
	s := &etcdServe{f: f, ctx: ctx, log: prefixWriter{w: os.Stderr, prefix: "etcd: "}, dataDir: cfg.Dir}

	// What the node API left for this start: a snapshot to restore
	// first (it replaces the data a reset would start from), then a
	// reset.
	if err := etcdmember.ApplyPendingRestore(etcdmember.RestoreOptions{
		DataDir: cfg.Dir, Name: cfg.Name, PeerURL: cfg.AdvertisePeerUrls[0].String(), Token: cfg.InitialClusterToken, Log: s.log,
	}); err != nil {
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		return 1
	}
	s.reset, s.resetAsked = etcdmember.ResetRequested(cfg.Dir)

	if f.peers != "" {
		tlsConfig, err := etcdmember.ClientTLS(f.clientCert, f.clientKey, f.trustedCA)
		if err != nil {
			return usageError("etcd", err)
		}
		endpoints := strings.Split(f.peers, ",")
		if s.peers, err = etcdmember.NewClient(endpoints, tlsConfig); err != nil {
			return usageError("etcd", err)
		}
		defer s.peers.Close()
		s.peerTLS = tlsConfig
		s.each = etcdmember.NewPeers(endpoints, tlsConfig)
	}
	if f.snapshotDir == "" && f.snapshotInterval > 0 {
		fmt.Fprintln(os.Stderr, "etcd: scheduled snapshots are off: this master has no state disk, and snapshots in RAM would go with the data they are meant to outlive; take one to the host with: kiln etcd snapshot save --node ADDR -o FILE")
	}
	for {
		// The file again: a start that joined or reset changed cfg.
		cfg, err := embed.ConfigFromFile(f.configFile)
		if err != nil {
			return usageError("etcd", fmt.Errorf("reading %s: %w", f.configFile, err))
		}
		code, again := s.start(cfg)
		if !again {
			return code
		}
	}
}

// etcdServe is one run of the etcd entry point: what stays from one
// start of etcd to the next (a member that rejoins starts again).
type etcdServe struct {
	f   etcdFlags
	ctx context.Context
	log io.Writer
	// peers reaches the other masters' etcd, each asks one of them
	// (Displaced); both nil without --peers.
	peers   *clientv3.Client
	peerTLS *tls.Config
	each    *etcdmember.Peers
	// A reset asked for (the marker's line), until a start from it is
	// ready.
	reset      string
	resetAsked bool
	dataDir    string // etcd's --data-dir
}

// stopped reports the stop: "etcd: terminated before ready, stopping".
func (s *etcdServe) stopped(when string) int {
	fmt.Fprintf(os.Stderr, "etcd: %v%s, stopping\n", context.Cause(s.ctx), when)
	return 0
}

// start starts etcd once from cfg and serves until the process stops
// (again false, and its exit code) or the member's data turns out to be
// displaced and is set aside (again true: start again, without data).
func (s *etcdServe) start(cfg *embed.Config) (code int, again bool) {
	ctx := s.ctx
	hasData := hasEtcdData(cfg)
	switch {
	case s.resetAsked && hasData:
		fmt.Fprintf(os.Stderr, "etcd: reset: starting as a cluster of this member alone from its own data (etcd's force-new-cluster; %s)\n", s.reset)
		cfg.ForceNewCluster = true
	case s.resetAsked:
		fmt.Fprintln(os.Stderr, "etcd: reset: this member has no data to start from; ignoring the reset")
		s.resetDone()
	}
	if !hasData && s.peers != nil {
		plan, err := etcdmember.PlanStart(ctx, s.peers, etcdmember.StartOptions{
			JoinOptions: etcdmember.JoinOptions{Name: cfg.Name, PeerURL: cfg.AdvertisePeerUrls[0].String(), Log: s.log},
			Bootstrap:   s.f.bootstrap,
			Grace:       s.f.bootstrapGrace,
			TLS:         s.peerTLS,
		})
		switch {
		case ctx.Err() != nil:
			return s.stopped(" before start"), false
		case err != nil:
			fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
			return 1, false
		case !plan.New:
			fmt.Fprintf(os.Stderr, "etcd: joining the cluster as member %x: %s\n", plan.ID, plan.InitialCluster)
			cfg.InitialCluster = plan.InitialCluster
			cfg.ClusterState = embed.ClusterStateFlagExisting
		}
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: start: %v\n", err)
		return 1, false
	}
	self := etcdmember.Self{ID: uint64(e.Server.MemberID()), ClusterID: uint64(e.Server.Cluster().ID()), Name: cfg.Name}
	// Read now, while the server runs: its database closes when it stops.
	self.RestoredAt = restoredAt(e, cfg.Dir, self.ClusterID)
	var check <-chan time.Time
	if s.each != nil {
		t := time.NewTicker(s.f.peerCheck)
		defer t.Stop()
		check = t.C
	}
	var lastNote string
	// displaced asks the peers whether the member's data is still its
	// cluster's; "" when it is, or when nothing says otherwise.
	displaced := func() string {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		reason, note := s.each.Displaced(cctx, self)
		if note != "" && note != lastNote {
			fmt.Fprintf(os.Stderr, "etcd: %s\n", note)
		}
		lastNote = note
		return reason
	}
	ready := false
	for !ready {
		select {
		case <-e.Server.ReadyNotify():
			ready = true
		case err := <-e.Err():
			if stopping(e) {
				// Its listeners fail as the server stops.
				return s.stoppedItself(e, cfg, displaced)
			}
			fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
			e.Close()
			return 1, false
		case <-e.Server.StopNotify():
			return s.stoppedItself(e, cfg, displaced)
		case <-ctx.Done():
			e.Close()
			return s.stopped(" before ready"), false
		case <-check:
			if why := displaced(); why != "" {
				return s.setAside(e, cfg, why)
			}
		}
	}
	fmt.Fprintln(os.Stderr, "etcd: ready to serve client requests")
	if s.resetAsked {
		s.resetDone()
		fmt.Fprintln(os.Stderr, "etcd: reset: done; this member is a cluster of its own, which the other masters join again (their data set aside) when they return")
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.afterReady(runCtx, e, cfg)
	for {
		select {
		case err := <-e.Err():
			if stopping(e) {
				cancel()
				return s.stoppedItself(e, cfg, displaced)
			}
			fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
			e.Close()
			return 1, false
		case <-e.Server.StopNotify():
			cancel()
			return s.stoppedItself(e, cfg, displaced)
		case <-check:
			if why := displaced(); why != "" {
				cancel()
				return s.setAside(e, cfg, why)
			}
		case <-ctx.Done():
			done := make(chan struct{})
			go func() { e.Close(); close(done) }()
			code := s.stopped("")
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				fmt.Fprintln(os.Stderr, "etcd: close timed out")
			}
			return code, false
		}
	}
}

// afterReady starts what a ready member does besides serving, until ctx
// ends: its promotion (a learner), the record of a restore, and the
// scheduled snapshots.
func (s *etcdServe) afterReady(ctx context.Context, e *embed.Etcd, cfg *embed.Config) {
	// A learner (just joined, or restarted before its promotion) votes
	// once promoted; the API server on this master waits for that (the
	// readiness probe). The peers promote it: a learner refuses the
	// request itself.
	if e.Server.IsLearner() {
		if s.peers == nil {
			fmt.Fprintln(os.Stderr, "etcd: this member is a learner and has no --peers to ask for its promotion: promote it from a voting member")
		} else {
			go func() {
				if err := etcdmember.Promote(ctx, s.peers, uint64(e.Server.MemberID()), s.log); err != nil && ctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
				}
			}()
		}
	}
	_, err := etcdmember.ReadRestoreMarker(cfg.Dir)
	restored := err == nil
	schedule := s.f.snapshotDir != "" && s.f.snapshotInterval > 0
	if !restored && !schedule {
		return
	}
	// The member's own endpoint, with its serving certificate (a
	// client certificate too, of the etcd CA).
	tlsConfig, err := etcdmember.ClientTLS(cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile, cfg.ClientTLSInfo.TrustedCAFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: a client of this member: %v\n", err)
		return
	}
	cli, err := etcdmember.NewClient([]string{cfg.AdvertiseClientUrls[0].String()}, tlsConfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		return
	}
	context.AfterFunc(ctx, func() { cli.Close() })
	if restored {
		// The other masters learn from the key that their cluster was
		// replaced (etcdmember.Peers.Displaced).
		go func() {
			if err := etcdmember.PublishRestore(ctx, cli, cfg.Dir, uint64(e.Server.Cluster().ID())); err != nil && ctx.Err() == nil {
				fmt.Fprintf(os.Stderr, "etcd: restore: %v\n", err)
			}
		}()
	}
	if schedule {
		go etcdmember.Schedule(ctx, cli, etcdmember.ScheduleOptions{
			Dir: s.f.snapshotDir, Interval: s.f.snapshotInterval, Keep: s.f.snapshotKeep,
			Info:   nodeapi.SnapshotInfo{Cluster: s.f.clusterName, CAHash: s.f.caHash, Node: cfg.Name},
			Voting: func() bool { return !e.Server.IsLearner() },
			Log:    s.log,
		})
	}
}

// stopping reports whether e's server is stopping (or has stopped).
func stopping(e *embed.Etcd) bool {
	select {
	case <-e.Server.StoppingNotify():
		return true
	default:
		return false
	}
}

// stoppedItself handles an etcd server that stopped by itself: a member
// removed from its cluster does, once its peers tell it. Its data is set
// aside only when the peers confirm it is displaced; otherwise the
// process exits and is restarted.
func (s *etcdServe) stoppedItself(e *embed.Etcd, cfg *embed.Config, displaced func() string) (int, bool) {
	if s.each != nil {
		for try := range 3 {
			if why := displaced(); why != "" {
				return s.setAside(e, cfg, why)
			}
			if try < 2 && ctxutil.Sleep(s.ctx, s.f.peerCheck) != nil {
				break
			}
		}
	}
	e.Close()
	if s.ctx.Err() != nil {
		return s.stopped(""), false
	}
	fmt.Fprintln(os.Stderr, "etcd: the etcd server stopped (its reason is logged above)")
	return 1, false
}

// setAside stops e, moves the member's data dir to DATA/etcd.removed
// (replacing an older one: the data is kept for a look, not used) and
// has serveEtcd start again without data: it joins its peers' cluster.
func (s *etcdServe) setAside(e *embed.Etcd, cfg *embed.Config, why string) (int, bool) {
	e.Close()
	aside := etcdmember.Files{DataDir: cfg.Dir}.Removed()
	err := os.RemoveAll(aside)
	if err == nil {
		err = os.Rename(cfg.Dir, aside)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: %s; setting this member's data aside to join again: %v\n", why, err)
		return 1, false
	}
	fmt.Fprintf(os.Stderr, "etcd: %s: this member's data is no longer its cluster's; moved it to %s and joining the cluster again\n", why, aside)
	return 0, true
}

// resetDone forgets the reset asked for: it is read once.
func (s *etcdServe) resetDone() {
	s.resetAsked = false
	if err := etcdmember.ResetDone(s.dataDir); err != nil {
		fmt.Fprintf(os.Stderr, "etcd: reset: removing its marker: %v\n", err)
	}
}

// restoredAt is when the cluster of e was restored from a snapshot: the
// record a restore left in etcd (for this cluster, not copied in from a
// snapshot of another), or the marker of a restored data dir not yet
// written there; zero: never.
func restoredAt(e *embed.Etcd, dataDir string, cluster uint64) time.Time {
	if m, err := etcdmember.ReadRestoreMarker(dataDir); err == nil {
		return m.At
	}
	if stopping(e) {
		return time.Time{} // its database is closing
	}
	r, err := e.Server.KV().Range(context.Background(), []byte(etcdmember.RestoredKey), nil, mvcc.RangeOptions{})
	if err != nil || len(r.KVs) == 0 {
		return time.Time{}
	}
	if m, ok := etcdmember.ParseRestoreMarker(r.KVs[0].Value); ok && m.ClusterID == fmt.Sprintf("%x", cluster) {
		return m.At
	}
	return time.Time{}
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
