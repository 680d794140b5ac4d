package etcdmember

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"kiln/internal/testutil"
)

func TestJoinAndPromote(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ctx := testContext(t)
	m1, m2, m3 := ca.member(t, "m1"), ca.member(t, "m2"), ca.member(t, "m3")
	ca.start(t, m1, "")
	cli := ca.client(t, m1)

	// A Join whose member did not start (the machine stopped before
	// etcd did) is found again, not added twice.
	first, err := Join(ctx, cli, JoinOptions{Name: m2.name, PeerURL: m2.peerURL})
	if err != nil {
		t.Fatal(err)
	}
	again, err := Join(ctx, cli, JoinOptions{Name: m2.name, PeerURL: m2.peerURL})
	if err != nil {
		t.Fatal(err)
	}
	if again != first {
		t.Errorf("second Join = %+v, want the first one's member %+v", again, first)
	}
	if want := "m1=" + m1.peerURL + ",m2=" + m2.peerURL; first.InitialCluster != want {
		t.Errorf("initial cluster %q, want %q", first.InitialCluster, want)
	}
	ca.start(t, m2, first.InitialCluster)

	// The API server's readiness probe reads isLearner from the gRPC
	// gateway's status (components.Etcd.Ready): a learner says so there.
	if st := gatewayStatus(t, ctx, ca.clientTLS, m2.clientURL); !st.IsLearner {
		t.Errorf("gateway status of a learner: %+v, want isLearner", st)
	}
	var log testutil.SyncBuffer
	if err := Promote(ctx, cli, first.ID, &log); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "is a voting member") {
		t.Errorf("promote log %q, want a line saying it votes", log.String())
	}
	if st := gatewayStatus(t, ctx, ca.clientTLS, m2.clientURL); st.IsLearner || st.Leader == "" || st.Leader == "0" {
		t.Errorf("gateway status of a voting member: %+v, want a leader and no isLearner", st)
	}

	ca.join(t, ctx, m3, nil, m1, m2)
	checkVoting(t, ctx, ca.client(t, m1, m2, m3), "m1", "m2", "m3")
}

type gatewayAnswer struct {
	IsLearner bool   `json:"isLearner"`
	Leader    string `json:"leader"`
}

func gatewayStatus(t *testing.T, ctx context.Context, tlsConfig *tls.Config, clientURL string) gatewayAnswer {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, clientURL+"/v3/maintenance/status", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a gatewayAnswer
	if err := json.Unmarshal(body, &a); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("gateway status: %s %s (%v)", resp.Status, body, err)
	}
	return a
}

// Two masters that join at the same moment: etcd takes one learner at a
// time, so one waits for the other's promotion; both end up voting.
func TestConcurrentJoins(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ctx := testContext(t)
	m1, m2, m3 := ca.member(t, "m1"), ca.member(t, "m2"), ca.member(t, "m3")
	ca.start(t, m1, "")
	var (
		wg  sync.WaitGroup
		log testutil.SyncBuffer
	)
	for _, m := range []*testMember{m2, m3} {
		wg.Go(func() {
			cli := ca.client(t, m1)
			j, err := Join(ctx, cli, JoinOptions{Name: m.name, PeerURL: m.peerURL, Log: &log, Retry: 200 * time.Millisecond})
			if err != nil {
				t.Errorf("join %s: %v", m.name, err)
				return
			}
			ca.start(t, m, j.InitialCluster)
			if err := Promote(ctx, cli, j.ID, &log); err != nil {
				t.Errorf("promote %s: %v", m.name, err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// The second waits for the first: it saw the first learner, or etcd
	// refused a second one or dropped its add while the first was made.
	if !strings.Contains(log.String(), "waiting: ") {
		t.Errorf("log %q: want one join waiting for the other", log.String())
	}
	checkVoting(t, ctx, ca.client(t, m1, m2, m3), "m1", "m2", "m3")
}

// A master that comes back without its data, under its name and address,
// replaces the member it was.
func TestStaleMemberReplaced(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ctx := testContext(t)
	ms := ca.threeMembers(t, ctx)
	m3 := ms[2]
	m3.stop()
	members, err := List(ctx, ca.client(t, ms[0], ms[1]))
	if err != nil {
		t.Fatal(err)
	}
	var oldID uint64
	for _, m := range members {
		if m.Name == "m3" {
			oldID = m.ID
			if m.Healthy {
				t.Errorf("stopped member m3 counted healthy")
			}
		}
	}
	if err := os.RemoveAll(m3.dir); err != nil {
		t.Fatal(err)
	}
	var log testutil.SyncBuffer
	ca.join(t, ctx, m3, &log, ms[0], ms[1])
	if !strings.Contains(log.String(), "replacing stale member m3 (") || !strings.Contains(log.String(), "this machine came back without its data") {
		t.Errorf("log %q: want the stale member replaced", log.String())
	}
	checkVoting(t, ctx, ca.client(t, ms...), "m1", "m2", "m3")
	members, _ = List(ctx, ca.client(t, ms[0]))
	for _, m := range members {
		if m.ID == oldID {
			t.Errorf("the stale member %x is still there", oldID)
		}
	}

	// Another machine that claims a running member's name is refused.
	_, err = Join(ctx, ca.client(t, ms[0]), JoinOptions{Name: "m2", PeerURL: "https://127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), "another machine runs etcd with this name") {
		t.Errorf("Join under a running member's name: %v, want a refusal", err)
	}
}

func TestRemoveKeepsQuorum(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ctx := testContext(t)
	ms := ca.threeMembers(t, ctx)
	cli := ca.client(t, ms[0], ms[1])
	ms[2].stop()

	err := Remove(ctx, cli, "m2")
	want := "refusing to remove m2: 3 voting members, 1 of the other 2 answers; after removal 2 voting members need 2 answering (quorum). Bring a member back first"
	if err == nil || err.Error() != want {
		t.Errorf("Remove(m2) with m3 down = %v\nwant %s", err, want)
	}
	err = Remove(ctx, cli, "nobody")
	if err == nil || !strings.Contains(err.Error(), `no etcd member named "nobody"; the members are: m1 (`) || !strings.Contains(err.Error(), "m3 (") {
		t.Errorf("Remove(nobody) = %v, want the members listed", err)
	}
	// m3 is down: removing it leaves two voting members, both answering.
	if err := Remove(ctx, cli, "m3"); err != nil {
		t.Fatalf("Remove(m3): %v", err)
	}
	checkVoting(t, ctx, cli, "m1", "m2")

	// A learner does not vote: removing it is always allowed.
	j, err := Join(ctx, cli, JoinOptions{Name: "m4", PeerURL: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := Remove(ctx, cli, strings.ToUpper(fmt.Sprintf("%x", j.ID))); err != nil {
		t.Errorf("removing the unstarted learner by its ID: %v", err)
	}
	checkVoting(t, ctx, cli, "m1", "m2")
}

func TestCheckQuorum(t *testing.T) {
	voter := func(id uint64, healthy bool) Member {
		return Member{ID: id, Name: fmt.Sprintf("m%d", id), Healthy: healthy}
	}
	learner := Member{ID: 9, Name: "m9", Learner: true}
	for _, tc := range []struct {
		name    string
		members []Member
		target  uint64
		refused string
	}{
		{"one of one", []Member{voter(1, true)}, 1, "it is the only voting member"},
		{"one of two, other up", []Member{voter(1, true), voter(2, true)}, 1, ""},
		{"one of two, other down", []Member{voter(1, true), voter(2, false)}, 1, "2 voting members, 0 of the other 1 answer; after removal 1 voting members need 1 answering"},
		{"down one of three", []Member{voter(1, true), voter(2, true), voter(3, false)}, 3, ""},
		{"up one of three, one down", []Member{voter(1, true), voter(2, true), voter(3, false)}, 2, "1 of the other 2 answers"},
		{"learners do not count", []Member{voter(1, true), voter(2, false), learner}, 1, "0 of the other 1 answer"},
		{"one of five, one down", []Member{voter(1, true), voter(2, true), voter(3, true), voter(4, true), voter(5, false)}, 1, ""},
		{"one of five, two down", []Member{voter(1, true), voter(2, true), voter(3, true), voter(4, false), voter(5, false)}, 1, "after removal 4 voting members need 3 answering"},
	} {
		var target Member
		for _, m := range tc.members {
			if m.ID == tc.target {
				target = m
			}
		}
		err := checkQuorum(target, tc.members)
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s: %v, want allowed", tc.name, err)
		case tc.refused != "" && (err == nil || !strings.Contains(err.Error(), tc.refused)):
			t.Errorf("%s: %v, want a refusal with %q", tc.name, err, tc.refused)
		}
	}
}

func TestInitialCluster(t *testing.T) {
	members := []*pb.Member{
		{ID: 1, Name: "a", PeerURLs: []string{"https://10.0.0.1:2380"}},
		{ID: 2, PeerURLs: []string{"https://10.0.0.2:2380"}},
		{ID: 0xab, PeerURLs: []string{"https://10.0.0.3:2380", "https://[fd00::3]:2380"}},
	}
	got := initialCluster(members, 2, "b")
	want := "a=https://10.0.0.1:2380,b=https://10.0.0.2:2380,unstarted-ab=https://10.0.0.3:2380,unstarted-ab=https://[fd00::3]:2380"
	if got != want {
		t.Errorf("initialCluster = %q\nwant %q", got, want)
	}
}

// No peer answers: a master that may bootstrap starts a new cluster after
// the grace period; any other waits, says so once, and stops with its
// context.
func TestPlanStartWithoutPeers(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	if p, err := PlanStart(context.Background(), nil, StartOptions{}); err != nil || !p.New {
		t.Errorf("PlanStart without peers = %+v, %v; want a new cluster", p, err)
	}
	dead := ca.member(t, "dead") // nothing listens at its URLs
	cli := ca.client(t, dead)
	opts := StartOptions{JoinOptions: JoinOptions{Name: "m2", PeerURL: "https://127.0.0.1:1", Retry: 50 * time.Millisecond}}

	var log testutil.SyncBuffer
	opts.Log, opts.Bootstrap, opts.Grace = &log, true, 300*time.Millisecond
	start := time.Now()
	p, err := PlanStart(testContext(t), cli, opts)
	if err != nil || !p.New {
		t.Errorf("PlanStart with --bootstrap = %+v, %v; want a new cluster", p, err)
	}
	if d := time.Since(start); d < opts.Grace {
		t.Errorf("a new cluster after %s, before the grace period (%s)", d, opts.Grace)
	}
	if !strings.Contains(log.String(), "starting a new etcd cluster") {
		t.Errorf("log %q: want the new cluster told", log.String())
	}

	var waitLog testutil.SyncBuffer
	opts.Log, opts.Bootstrap = &waitLog, false
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = PlanStart(ctx, cli, opts)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("PlanStart without --bootstrap = %v, want it to wait until its context ends", err)
	}
	want := "waiting for a master with a running etcd at " + dead.clientURL + " (only the first of controlPlane.masters starts a new cluster)\n"
	if waitLog.String() != want {
		t.Errorf("log %q\nwant %q (once)", waitLog.String(), want)
	}
}

// Something accepts connections at a peer's etcd port but does not
// answer (an etcd still starting, or one with another CA): a master that
// may bootstrap must not start a second cluster beside it.
func TestPlanStartNeverBesideAListeningPeer(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	peer := "https://" + ln.Addr().String()
	cli, err := NewClient([]string{peer}, ca.clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var log testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	p, err := PlanStart(ctx, cli, StartOptions{
		JoinOptions: JoinOptions{Name: "m1", PeerURL: "https://127.0.0.1:1", Log: &log, Retry: 50 * time.Millisecond},
		Bootstrap:   true, Grace: 100 * time.Millisecond,
	})
	if err == nil || p.New {
		t.Errorf("PlanStart beside a listening peer = %+v, %v; want it to wait until its context ends", p, err)
	}
	if want := "etcd at " + peer + " accepts connections but does not answer"; !strings.Contains(log.String(), want) {
		t.Errorf("log %q, want %q", log.String(), want)
	}
}

// A peer answers: PlanStart joins its cluster, with or without
// --bootstrap.
func TestPlanStartJoins(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ctx := testContext(t)
	m1, m2 := ca.member(t, "m1"), ca.member(t, "m2")
	ca.start(t, m1, "")
	// One peer down, one up: the one that answers is enough.
	cli := ca.client(t, ca.member(t, "down"), m1)
	p, err := PlanStart(ctx, cli, StartOptions{JoinOptions: JoinOptions{Name: m2.name, PeerURL: m2.peerURL}, Bootstrap: true})
	if err != nil || p.New || !p.Learner {
		t.Fatalf("PlanStart with a running peer = %+v, %v; want to join as a learner", p, err)
	}
	ca.start(t, m2, p.InitialCluster)
	if err := Promote(ctx, cli, p.ID, nil); err != nil {
		t.Fatal(err)
	}
	checkVoting(t, ctx, ca.client(t, m1, m2), "m1", "m2")
}

// The masters' etcd is another cluster's (another CA: this master's
// image was built from another cluster directory): PlanStart says so
// and ends, whether or not this member may bootstrap, and starts
// nothing.
func TestPlanStartRefusesAnotherClustersPeer(t *testing.T) {
	t.Parallel()
	theirs, ours := newTestCA(t), newTestCA(t)
	ctx := testContext(t)
	m1 := theirs.member(t, "m1")
	theirs.start(t, m1, "")
	cli := ours.client(t, m1)
	for _, bootstrap := range []bool{false, true} {
		var log testutil.SyncBuffer
		p, err := PlanStart(ctx, cli, StartOptions{
			JoinOptions: JoinOptions{Name: "m2", PeerURL: "https://127.0.0.1:1", Log: &log, Retry: 50 * time.Millisecond},
			Bootstrap:   bootstrap, Grace: 100 * time.Millisecond, TLS: ours.clientTLS,
		})
		if err == nil || p.New || ctx.Err() != nil {
			t.Fatalf("bootstrap %t: PlanStart beside another cluster's etcd = %+v, %v; want an error at once", bootstrap, p, err)
		}
		for _, want := range []string{"the etcd at " + m1.clientURL + " is another cluster's", "not signed by this master's etcd CA", "kiln build --cluster"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("bootstrap %t: error %q, want %q", bootstrap, err, want)
			}
		}
	}
}
