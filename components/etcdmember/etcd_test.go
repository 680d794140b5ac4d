package etcdmember

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"kiln/internal/testutil"
	"kiln/pki"
)

// The tests run real etcd servers, embedded in the test process, on
// 127.0.0.1 with TLS for clients and peers, as kiln's masters do.

func TestMain(m *testing.M) {
	// Each member preallocates two WAL segments (64 MB each upstream).
	wal.SegmentSizeBytes = 1 << 20
	os.Exit(m.Run())
}

// testCA holds the files every test member and client uses: one
// certificate for 127.0.0.1 serves clients and peers.
type testCA struct {
	certFile, keyFile, caFile string
	clientTLS                 *tls.Config
	members                   []*testMember // every member started
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	ca, err := pki.NewCA("etcd-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &testCA{
		certFile: filepath.Join(dir, "server.crt"),
		keyFile:  filepath.Join(dir, "server.key"),
		caFile:   filepath.Join(dir, "ca.crt"),
	}
	// Registered after the first TempDir: the members stop before
	// their data dirs go.
	t.Cleanup(c.stopAll)
	write := func(path string, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(c.caFile, ca.CertPEM)
	certPEM, keyPEM, err := ca.Issue(pki.CertRequest{
		CommonName: "etcd", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		Server: true, Client: true, Validity: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	write(c.certFile, certPEM)
	write(c.keyFile, keyPEM)
	certPEM, keyPEM, err = ca.Issue(pki.CertRequest{CommonName: "client", Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(dir, "client.crt"), certPEM)
	write(filepath.Join(dir, "client.key"), keyPEM)
	c.clientTLS, err = ClientTLS(filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"), c.caFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testMember is one etcd member: its name, URLs and data dir stay when it
// is stopped, so it can start again.
type testMember struct {
	name, clientURL, peerURL, dir string
	e                             *embed.Etcd
}

func (c *testCA) member(t *testing.T, name string) *testMember {
	t.Helper()
	return &testMember{
		name:      name,
		clientURL: "https://" + testutil.FreeAddr(t),
		peerURL:   "https://" + testutil.FreeAddr(t),
		dir:       filepath.Join(t.TempDir(), name),
	}
}

// start starts m and waits until it serves; initialCluster "" starts a
// new cluster of m alone.
func (c *testCA) start(t *testing.T, m *testMember, initialCluster string) {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cu, _ := url.Parse(m.clientURL)
	pu, _ := url.Parse(m.peerURL)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialClusterToken = "kiln-test"
	if initialCluster == "" {
		cfg.InitialCluster = m.name + "=" + m.peerURL
		cfg.ClusterState = embed.ClusterStateFlagNew
	} else {
		cfg.InitialCluster = initialCluster
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	tlsInfo := transport.TLSInfo{CertFile: c.certFile, KeyFile: c.keyFile, TrustedCAFile: c.caFile, ClientCertAuth: true}
	cfg.ClientTLSInfo, cfg.PeerTLSInfo = tlsInfo, tlsInfo
	// etcd's errors go to a buffer the test shows when it fails: a
	// stopping member logs its closed listeners as errors.
	var log testutil.SyncBuffer
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(zapcore.NewCore(
		zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(&log), zap.ErrorLevel)))
	t.Cleanup(func() {
		if t.Failed() && log.String() != "" {
			t.Logf("etcd member %s logged:\n%s", m.name, log.String())
		}
	})
	cfg.UnsafeNoFsync = true
	// Short raft timing: elections and catching up take a fraction of a
	// second instead of seconds.
	cfg.TickMs, cfg.ElectionMs = 50, 500
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("starting etcd member %s: %v", m.name, err)
	}
	m.e = e
	if !slices.Contains(c.members, m) {
		c.members = append(c.members, m)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("etcd member %s: %v", m.name, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("etcd member %s not ready within 30s", m.name)
	}
}

// stopAll stops the leader first: a leader that stops hands its
// leadership to a follower, and waits seconds for one that has stopped.
func (c *testCA) stopAll() {
	for _, m := range c.members {
		if m.e != nil && m.e.Server.Leader() == m.e.Server.MemberID() {
			m.stop()
		}
	}
	for _, m := range c.members {
		m.stop()
	}
}

func (m *testMember) stop() {
	if m.e != nil {
		m.e.Close()
		m.e = nil
	}
}

func (c *testCA) client(t *testing.T, members ...*testMember) *clientv3.Client {
	t.Helper()
	var eps []string
	for _, m := range members {
		eps = append(eps, m.clientURL)
	}
	cli, err := NewClient(eps, c.clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// join joins m to the cluster through the voting members via, starts it
// and promotes it, the way the etcd entry point does.
func (c *testCA) join(t *testing.T, ctx context.Context, m *testMember, log io.Writer, via ...*testMember) {
	t.Helper()
	cli := c.client(t, via...)
	j, err := Join(ctx, cli, JoinOptions{Name: m.name, PeerURL: m.peerURL, Log: log, Retry: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("join %s: %v", m.name, err)
	}
	if !j.Learner {
		t.Errorf("join %s: not a learner", m.name)
	}
	c.start(t, m, j.InitialCluster)
	if err := Promote(ctx, cli, j.ID, log); err != nil {
		t.Fatalf("promote %s: %v", m.name, err)
	}
}

// threeMembers is a cluster of three voting members, m1 to m3.
func (c *testCA) threeMembers(t *testing.T, ctx context.Context) []*testMember {
	ms := []*testMember{c.member(t, "m1"), c.member(t, "m2"), c.member(t, "m3")}
	c.start(t, ms[0], "")
	c.join(t, ctx, ms[1], nil, ms[0])
	c.join(t, ctx, ms[2], nil, ms[0], ms[1])
	return ms
}

// checkVoting fails t unless the cluster has exactly the named members,
// every one voting and answering, one of them leading.
func checkVoting(t *testing.T, ctx context.Context, cli *clientv3.Client, names ...string) {
	t.Helper()
	members, err := List(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	leaders := 0
	got := map[string]bool{}
	for _, m := range members {
		got[m.Name] = true
		if m.Learner || !m.Healthy {
			t.Errorf("member %s: learner %v, healthy %v; want a healthy voting member", m, m.Learner, m.Healthy)
		}
		if m.Leader {
			leaders++
		}
	}
	if len(members) != len(names) {
		t.Errorf("members: %s; want %v", describe(members), names)
	}
	for _, n := range names {
		if !got[n] {
			t.Errorf("no member %s among %s", n, describe(members))
		}
	}
	if leaders != 1 {
		t.Errorf("%d leaders among %s, want 1", leaders, describe(members))
	}
}
