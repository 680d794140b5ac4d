package vip

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"kiln/internal/testutil"
)

// world is the network the masters share: who has the VIP on, and every
// moment two had it at once.
type world struct {
	mu       sync.Mutex
	on       map[string]bool
	overlaps []string
}

// fakeAddr is one master's VIP, in the world.
type fakeAddr struct {
	name      string
	w         *world
	addErr    error
	announced atomic.Int32
}

func (f *fakeAddr) Add() error {
	if f.addErr != nil {
		return f.addErr
	}
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	for other, on := range f.w.on {
		if on && other != f.name {
			f.w.overlaps = append(f.w.overlaps, fmt.Sprintf("%s added the VIP while %s had it", f.name, other))
		}
	}
	f.w.on[f.name] = true
	return nil
}

func (f *fakeAddr) Announce() error {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	if !f.w.on[f.name] {
		return errors.New("announced without the address")
	}
	f.announced.Add(1)
	return nil
}

func (f *fakeAddr) Remove() error {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	f.w.on[f.name] = false
	return nil
}

func (f *fakeAddr) String() string { return "the VIP of " + f.name }

func (w *world) holding(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.on[name]
}

// master is one Run, with its API server that can be made unready or
// unreachable.
type master struct {
	name    string
	addr    *fakeAddr
	unready atomic.Bool // /readyz fails
	down    atomic.Bool // every API request fails
	log     testutil.SyncBuffer
	cancel  context.CancelFunc
	done    chan error
}

// view is a client of the shared fake API (its tracker) that fails while
// m is down: each master reaches the cluster through its own API server.
func (m *master) view(shared *fake.Clientset) kubernetes.Interface {
	cs := fake.NewClientset()
	cs.ReactionChain = append([]k8stesting.Reactor{&k8stesting.SimpleReactor{Verb: "*", Resource: "*",
		Reaction: func(k8stesting.Action) (bool, runtime.Object, error) {
			if m.down.Load() {
				return true, nil, errors.New("connection refused")
			}
			return false, nil, nil
		}}}, shared.ReactionChain...)
	return cs
}

// Fast timings (the Lease counts whole seconds: at least 1 s).
const (
	testLease = 2 * time.Second
	testRenew = time.Second
	testRetry = 200 * time.Millisecond
)

func start(t *testing.T, shared *fake.Clientset, w *world, name string, unready bool) *master {
	t.Helper()
	m := &master{name: name, addr: &fakeAddr{name: name, w: w}, done: make(chan error, 1)}
	m.unready.Store(unready)
	o := Options{
		Identity: name, Client: m.view(shared), Address: m.addr,
		Ready: func(ctx context.Context) error {
			if m.unready.Load() {
				return errors.New("/readyz: etcd: not ok")
			}
			return nil
		},
		LeaseDuration: testLease, RenewDeadline: testRenew, RetryPeriod: testRetry,
		AnnounceEvery: 20 * time.Millisecond, Log: &m.log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- Run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		<-m.done
		if t.Failed() {
			t.Logf("%s's log:\n%s", name, m.log.String())
		}
	})
	return m
}

// stop is SIGTERM: Run returns once the address is off.
func (m *master) stop(t *testing.T) {
	t.Helper()
	m.cancel()
	select {
	case err := <-m.done:
		if err != nil {
			t.Errorf("%s: Run: %v", m.name, err)
		}
		m.done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: Run did not return after its context ended", m.name)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("after %s: not %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func leaseHolder(t *testing.T, cs *fake.Clientset) string {
	t.Helper()
	l, err := cs.CoordinationV1().Leases(LeaseNamespace).Get(context.Background(), LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// One master holds the VIP at a time; it moves when the holder's API
// server turns unready (at once: the Lease is given back), when the
// holder cannot reach its API server (after the Lease expires, the holder
// having let go first), and when the holder stops.
func TestElection(t *testing.T) {
	shared := fake.NewClientset()
	w := &world{on: map[string]bool{}}
	a := start(t, shared, w, "a", false)
	b := start(t, shared, w, "b", true) // not ready: a wins
	waitFor(t, 5*time.Second, "a holding the VIP", func() bool { return w.holding("a") })
	waitFor(t, 5*time.Second, "a's 3 gratuitous ARPs", func() bool { return a.addr.announced.Load() == 3 })
	if h := leaseHolder(t, shared); h != "a" {
		t.Errorf("the Lease is %q's, want a's", h)
	}
	b.unready.Store(false)
	time.Sleep(testLease) // b competes, and loses
	if w.holding("b") {
		t.Fatal("b took the VIP from a healthy holder")
	}

	// a's API server turns unready: a lets go and gives the Lease back,
	// b takes it at its next try, well before the Lease would expire.
	a.unready.Store(true)
	waitFor(t, 5*time.Second, "a letting the VIP go", func() bool { return !w.holding("a") })
	took := waitFor(t, 5*time.Second, "b holding the VIP", func() bool { return w.holding("b") })
	t.Logf("unready holder to b holding the VIP: %s (the Lease is %s)", took, testLease)
	if !strings.Contains(a.log.String(), "not ready") {
		t.Errorf("a's log does not say why it let go:\n%s", a.log.String())
	}
	a.unready.Store(false)

	// b's API server becomes unreachable (b itself runs on): b cannot
	// renew and lets go after its renew deadline, before a may take the
	// Lease, which it does once it has expired.
	b.down.Store(true)
	cut := time.Now()
	waitFor(t, 5*time.Second, "b letting the VIP go", func() bool { return !w.holding("b") })
	dropped := time.Since(cut)
	waitFor(t, 10*time.Second, "a holding the VIP", func() bool { return w.holding("a") })
	t.Logf("unreachable holder: b let go after %s, a held the VIP after %s", dropped.Round(10*time.Millisecond), time.Since(cut).Round(10*time.Millisecond))
	if dropped > testRetry+testRenew+time.Second {
		t.Errorf("b held the VIP %s after it could no longer renew (retry %s + renew deadline %s)", dropped, testRetry, testRenew)
	}
	b.down.Store(false)

	// a stops (SIGTERM): the address is off when Run returns, and the
	// Lease is given back.
	a.stop(t)
	if w.holding("a") {
		t.Error("a still has the VIP after Run returned")
	}
	if h := leaseHolder(t, shared); h == "a" {
		t.Error("a stopped without giving the Lease back")
	}
	waitFor(t, 5*time.Second, "b holding the VIP after a stopped", func() bool { return w.holding("b") })

	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.overlaps) > 0 {
		t.Errorf("two masters had the VIP at once: %v", w.overlaps)
	}
}

// A run killed while it held the VIP left the address behind: the next
// run takes it off before anything else, even with its API server down.
func TestStaleAddressRemovedAtStart(t *testing.T) {
	shared := fake.NewClientset()
	w := &world{on: map[string]bool{"a": true}}
	start(t, shared, w, "a", true)
	waitFor(t, 5*time.Second, "the stale address removed", func() bool { return !w.holding("a") })
}

// A master that wins the Lease but cannot add the address gives the
// Lease back instead of keeping the VIP from the others.
func TestAddFailureGivesTheLeaseBack(t *testing.T) {
	shared := fake.NewClientset()
	w := &world{on: map[string]bool{}}
	a := start(t, shared, w, "a", false)
	a.addr.addErr = errors.New("operation not permitted")
	waitFor(t, 5*time.Second, "a's failure in its log", func() bool { return strings.Contains(a.log.String(), "operation not permitted") })
	start(t, shared, w, "b", false)
	waitFor(t, 10*time.Second, "b holding the VIP", func() bool { return w.holding("b") })
}

func TestCheck(t *testing.T) {
	ok := Options{Identity: "a", Client: fake.NewClientset(), Ready: func(context.Context) error { return nil }, Address: &fakeAddr{},
		LeaseDuration: 10 * time.Second, RenewDeadline: 7 * time.Second, RetryPeriod: time.Second}
	if err := ok.Check(); err != nil {
		t.Fatalf("kiln's timings: %v", err)
	}
	for want, change := range map[string]func(*Options){
		"no identity":                   func(o *Options) { o.Identity = "" },
		"want at least 1s":              func(o *Options) { o.LeaseDuration = 500 * time.Millisecond },
		"longer than the renew":         func(o *Options) { o.RenewDeadline = 10 * time.Second },
		"longer than 1.2 retry periods": func(o *Options) { o.RetryPeriod = 6 * time.Second },
		"no API client":                 func(o *Options) { o.Ready = nil },
	} {
		o := ok
		change(&o)
		if err := o.Check(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", want, err)
		}
	}
}
