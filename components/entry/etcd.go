package entry

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/storage/wal"
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

// runEtcd starts embedded etcd from an etcd configuration file (the same YAML
// format as upstream etcd's --config-file) and serves until SIGTERM/SIGINT.
func runEtcd(args []string) int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	configFile := fs.String("config-file", "", "path to the etcd configuration file (YAML, upstream etcd format)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *configFile == "" {
		return usageError("etcd", errors.New("--config-file is required"))
	}
	wal.SegmentSizeBytes = walSegmentBytes
	cfg, err := embed.ConfigFromFile(*configFile)
	if err != nil {
		return usageError("etcd", fmt.Errorf("reading %s: %w", *configFile, err))
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: start: %v\n", err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintln(os.Stderr, "etcd: ready to serve client requests")
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		e.Close()
		return 1
	case s := <-sigs:
		fmt.Fprintf(os.Stderr, "etcd: %v before ready, stopping\n", s)
		e.Close()
		return 0
	}
	select {
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		e.Close()
		return 1
	case s := <-sigs:
		fmt.Fprintf(os.Stderr, "etcd: %v, stopping\n", s)
		done := make(chan struct{})
		go func() { e.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			fmt.Fprintln(os.Stderr, "etcd: close timed out")
		}
		return 0
	}
}
