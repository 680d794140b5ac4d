package entry

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kiln/components/etcdmember"
	"kiln/internal/testutil"
	"kiln/pki"
)

// These tests run runEtcd as the node binary does, on 127.0.0.1, and stop
// it with SIGTERM sent to the test process (runEtcd catches it). They
// are not parallel: runEtcd writes to os.Stderr, which they capture.

// etcdFiles are the certificates of a test cluster, as Etcd.Prepare
// writes them on a master.
type etcdFiles struct {
	dir, cert, key, ca, clientCert, clientKey string
}

func newEtcdFiles(t *testing.T) etcdFiles {
	t.Helper()
	dir := t.TempDir()
	f := etcdFiles{
		dir: dir, cert: filepath.Join(dir, "server.crt"), key: filepath.Join(dir, "server.key"), ca: filepath.Join(dir, "ca.crt"),
		clientCert: filepath.Join(dir, "client.crt"), clientKey: filepath.Join(dir, "client.key"),
	}
	ca, err := pki.NewCA("etcd-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(f.ca, ca.CertPEM, 0o600))
	certPEM, keyPEM, err := ca.Issue(pki.CertRequest{CommonName: "etcd", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, Client: true})
	must(err)
	must(os.WriteFile(f.cert, certPEM, 0o600))
	must(os.WriteFile(f.key, keyPEM, 0o600))
	certPEM, keyPEM, err = ca.Issue(pki.CertRequest{CommonName: "kube-apiserver-etcd-client", Client: true})
	must(err)
	must(os.WriteFile(f.clientCert, certPEM, 0o600))
	must(os.WriteFile(f.clientKey, keyPEM, 0o600))
	return f
}

// etcdMaster is one master's etcd: its config file, in the format
// Etcd.Prepare writes, and its client URL.
type etcdMaster struct {
	name, configFile, clientURL string
}

func (f etcdFiles) master(t *testing.T, name string) etcdMaster {
	t.Helper()
	client, peer := "https://"+testutil.FreeAddr(t), "https://"+testutil.FreeAddr(t)
	tls := fmt.Sprintf("{cert-file: %s, key-file: %s, client-cert-auth: true, trusted-ca-file: %s}", f.cert, f.key, f.ca)
	config := strings.Join([]string{
		"name: " + name,
		"data-dir: " + filepath.Join(f.dir, name),
		"listen-client-urls: " + client,
		"advertise-client-urls: " + client,
		"listen-peer-urls: " + peer,
		"initial-advertise-peer-urls: " + peer,
		"initial-cluster: " + name + "=" + peer,
		"initial-cluster-state: new",
		"initial-cluster-token: kiln-test",
		"client-transport-security: " + tls,
		"peer-transport-security: " + tls,
		"logger: zap",
		"log-outputs: [stderr]",
		"log-level: fatal",
		"heartbeat-interval: 50",
		"election-timeout: 500",
		"unsafe-no-fsync: true",
	}, "\n") + "\n"
	path := filepath.Join(f.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return etcdMaster{name: name, configFile: path, clientURL: client}
}

// args are runEtcd's flags for m, with peers (the other masters).
func (f etcdFiles) args(m etcdMaster, bootstrap bool, peers ...etcdMaster) []string {
	args := []string{"--config-file=" + m.configFile}
	if len(peers) > 0 {
		var urls []string
		for _, p := range peers {
			urls = append(urls, p.clientURL)
		}
		args = append(args, "--peers="+strings.Join(urls, ","), fmt.Sprintf("--bootstrap=%v", bootstrap),
			"--peer-client-cert="+f.clientCert, "--peer-client-key="+f.clientKey, "--peer-trusted-ca="+f.ca)
	}
	return args
}

// captureStderr points os.Stderr at a file until the test ends and
// returns what was written to it so far.
func captureStderr(t *testing.T) func() string {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = f
	t.Cleanup(func() {
		os.Stderr = old
		f.Close()
	})
	return func() string {
		b, _ := os.ReadFile(f.Name())
		return string(b)
	}
}

// etcdRun is one serveEtcd running.
type etcdRun struct {
	stop chan os.Signal
	code chan int
}

func startEtcd(args []string) etcdRun {
	r := etcdRun{stop: make(chan os.Signal, 1), code: make(chan int, 1)}
	go func() { r.code <- serveEtcd(args, r.stop) }()
	return r
}

// wait wants r to return 0 within 25 s (of SIGTERM).
func (r etcdRun) wait(t *testing.T, stderr func() string) {
	t.Helper()
	select {
	case c := <-r.code:
		if c != 0 {
			t.Errorf("etcd exited %d after SIGTERM, want 0; stderr:\n%s", c, stderr())
		}
	case <-time.After(25 * time.Second):
		t.Fatalf("etcd did not stop within 25s of SIGTERM; stderr:\n%s", stderr())
	}
}

// stopLeaderFirst stops the runs of ms, the leader first: a leader that
// stops hands its leadership to a follower, and waits seconds for one that
// is stopping too.
func stopLeaderFirst(t *testing.T, f etcdFiles, ms []etcdMaster, runs []etcdRun, stderr func() string) {
	t.Helper()
	leader := leaderURL(t, f, ms...)
	for i := range ms {
		if ms[i].clientURL == leader {
			runs[i].stop <- syscall.SIGTERM
			runs[i].wait(t, stderr)
		}
	}
	for i := range ms {
		if ms[i].clientURL != leader {
			runs[i].stop <- syscall.SIGTERM
			runs[i].wait(t, stderr)
		}
	}
}

func waitFor(t *testing.T, stderr func() string, what string, count int) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, 100*time.Millisecond, fmt.Sprintf("%d× %q on stderr", count, what), func() error {
		if out := stderr(); strings.Count(out, what) < count {
			return fmt.Errorf("stderr so far:\n%s", out)
		}
		return nil
	})
}

// A master that may not bootstrap waits for a peer, says so once, and
// still stops at SIGTERM (sent to the test process: runEtcd catches it).
func TestRunEtcdWaitsForAPeer(t *testing.T) {
	f := newEtcdFiles(t)
	m2, dead := f.master(t, "m2"), f.master(t, "m1") // nothing runs m1
	stderr := captureStderr(t)
	code := make(chan int, 1)
	go func() { code <- runEtcd(f.args(m2, false, dead)) }()
	waitFor(t, stderr, "waiting for a master with a running etcd at "+dead.clientURL, 1)
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	etcdRun{code: code}.wait(t, stderr)
	if out := stderr(); !strings.Contains(out, "etcd: terminated before start, stopping") || strings.Count(out, "waiting for a master") != 1 {
		t.Errorf("stderr:\n%s\nwant one wait and the stop before start", out)
	}
}

// Two masters: the first starts the cluster, the second joins it as a
// learner and is promoted; both then restart from their data.
func TestRunEtcdJoinsAndRestarts(t *testing.T) {
	f := newEtcdFiles(t)
	ms := []etcdMaster{f.master(t, "m1"), f.master(t, "m2")}
	stderr := captureStderr(t)
	runs := []etcdRun{
		startEtcd(append(f.args(ms[0], true, ms[1]), "--bootstrap-grace=1s")),
		startEtcd(f.args(ms[1], false, ms[0])),
	}
	waitFor(t, stderr, "is a voting member", 1)
	out := stderr()
	for _, want := range []string{
		"etcd: no master answers at " + ms[1].clientURL + " after 1s: starting a new etcd cluster",
		"etcd: joining the cluster as member ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stderr:\n%s\nwant %q", out, want)
		}
	}
	checkMembers(t, f, ms...)
	stopLeaderFirst(t, f, ms, runs, stderr)

	// Back with their data: they start as they were, without looking
	// for peers (no grace, no join).
	before := len(stderr())
	runs = []etcdRun{startEtcd(f.args(ms[0], true, ms[1])), startEtcd(f.args(ms[1], false, ms[0]))}
	waitFor(t, stderr, "etcd: ready to serve client requests", 4)
	checkMembers(t, f, ms...)
	stopLeaderFirst(t, f, ms, runs, stderr)
	if again := stderr()[before:]; strings.Contains(again, "joining") || strings.Contains(again, "looking for") {
		t.Errorf("restart with data looked for peers:\n%s", again)
	}
}

func etcdClient(t *testing.T, f etcdFiles, ms ...etcdMaster) *clientv3.Client {
	t.Helper()
	tlsConfig, err := etcdmember.ClientTLS(f.clientCert, f.clientKey, f.ca)
	if err != nil {
		t.Fatal(err)
	}
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.clientURL)
	}
	cli, err := etcdmember.NewClient(eps, tlsConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// checkMembers wants exactly ms as the cluster's members, all voting and
// answering.
func checkMembers(t *testing.T, f etcdFiles, ms ...etcdMaster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	members, err := etcdmember.List(ctx, etcdClient(t, f, ms...))
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != len(ms) {
		t.Errorf("members %v, want %d", members, len(ms))
	}
	for _, m := range members {
		if m.Learner || !m.Healthy {
			t.Errorf("member %s: learner %v, healthy %v; want a healthy voting member", m, m.Learner, m.Healthy)
		}
	}
}

// leaderURL is the client URL of the leader among ms.
func leaderURL(t *testing.T, f etcdFiles, ms ...etcdMaster) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	members, err := etcdmember.List(ctx, etcdClient(t, f, ms...))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.Leader && len(m.ClientURLs) > 0 {
			return m.ClientURLs[0]
		}
	}
	return ""
}
