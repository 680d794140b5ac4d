// Package vip keeps the API's virtual IP (controlPlane.vip) on one master
// at a time. Every master runs it; each competes for the Lease
// kube-system/kiln-vip (client-go's leader election) through its own API
// server, and only while that API server says it is ready (/readyz). The
// holder adds the address to the interface that carries the node's own
// address on the VIP's network and announces it with a few gratuitous
// ARPs, so the machines on that network send the VIP's traffic to it at
// once instead of to a dead holder they still remember. It takes the
// address off the moment it loses the Lease, when its API server turns
// unready, and when it is stopped; then it gives the Lease back, so
// another master takes over within a retry period instead of waiting for
// the Lease to expire.
//
// What it does to the network is behind Address (Link on Linux), so the
// election can be tested without root.
package vip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// The Lease the masters compete for.
const (
	LeaseNamespace = metav1.NamespaceSystem
	LeaseName      = "kiln-vip"
)

// Address is the virtual IP on this node: what the holder of the Lease
// does with it.
type Address interface {
	// Add puts the address on the node; adding it again is no error.
	Add() error
	// Announce sends one gratuitous ARP for it.
	Announce() error
	// Remove takes it off the node; removing it when it is not there is
	// no error.
	Remove() error
	// String names it for the log: "10.0.0.5 on eth0".
	String() string
}

// Options say what Run competes for and how.
type Options struct {
	// Identity is this master's name in the Lease (its node name).
	Identity string
	// Client reaches this master's own API server.
	Client kubernetes.Interface
	// Ready checks that this master's API server is ready (/readyz): a
	// master competes only while it is, and gives the VIP up after
	// UnreadyAfter checks in a row fail.
	Ready func(ctx context.Context) error
	// Address is the VIP on this node.
	Address Address
	// The Lease's timings (client-go's leader election); see
	// components/vip.go for the values and why.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// UnreadyAfter is how many failed readiness checks in a row (one
	// every RetryPeriod) make the holder give the VIP up; default 10.
	// A dead holder loses the VIP by its Lease, not by this check; this
	// is for a holder whose API server cannot serve (cut off from etcd).
	// /readyz fails for a few seconds on a busy control plane (etcd's
	// readiness under load): with 3 checks of 1 s, TestHA's masters under
	// TCG dropped and took the VIP back every 10 to 60 seconds.
	UnreadyAfter int
	// Announcements is how many gratuitous ARPs a new holder sends,
	// AnnounceEvery apart (defaults 3 and 1 s: the first at once; more
	// than one because a single frame can be lost, and a switch that has
	// just seen the link move may drop the first).
	Announcements int
	AnnounceEvery time.Duration
	// Log receives one line per change.
	Log io.Writer
}

func (o *Options) defaults() {
	if o.UnreadyAfter <= 0 {
		o.UnreadyAfter = 10
	}
	if o.Announcements <= 0 {
		o.Announcements = 3
	}
	if o.AnnounceEvery <= 0 {
		o.AnnounceEvery = time.Second
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

func (o *Options) logf(format string, args ...any) {
	fmt.Fprintf(o.Log, "vip: "+format+"\n", args...)
}

// Check validates the options as client-go's leader election would, so a
// bad value is an error at start, not a panic later.
func (o *Options) Check() error {
	switch {
	case o.Identity == "":
		return errors.New("no identity (the node's name)")
	case o.Client == nil || o.Ready == nil || o.Address == nil:
		return errors.New("no API client, readiness check or address")
	case o.LeaseDuration < time.Second:
		// The Lease records whole seconds: less would be 0.
		return fmt.Errorf("lease duration %s: want at least 1s", o.LeaseDuration)
	case o.LeaseDuration <= o.RenewDeadline:
		return fmt.Errorf("lease duration %s must be longer than the renew deadline %s", o.LeaseDuration, o.RenewDeadline)
	case o.RenewDeadline <= time.Duration(leaderelection.JitterFactor*float64(o.RetryPeriod)):
		return fmt.Errorf("renew deadline %s must be longer than %.1f retry periods (%s)", o.RenewDeadline, leaderelection.JitterFactor, o.RetryPeriod)
	case o.RetryPeriod <= 0:
		return fmt.Errorf("retry period %s: want more than 0", o.RetryPeriod)
	}
	return nil
}

// Run competes for the Lease until ctx ends, holding the VIP while it
// holds the Lease, and returns with the VIP off this node.
func Run(ctx context.Context, o Options) error {
	o.defaults()
	if err := o.Check(); err != nil {
		return err
	}
	h := &holder{o: &o}
	// A run that was killed (SIGKILL, out of memory) left the address
	// behind: this node answers for it only once it holds the Lease.
	if err := h.release("starting"); err != nil {
		return err
	}
	defer h.release("stopping")
	for ctx.Err() == nil {
		if !waitReady(ctx, &o) {
			break
		}
		o.logf("this master's API server is ready: competing for the Lease %s/%s as %s", LeaseNamespace, LeaseName, o.Identity)
		electCtx, stop := context.WithCancel(ctx)
		unready := make(chan struct{})
		go func() {
			if watchReady(electCtx, &o) {
				close(unready)
				stop()
			}
		}()
		err := h.elect(electCtx)
		stop()
		if err != nil {
			return err
		}
		// The address is off (the election's end took it off); give
		// the Lease back so another master need not wait it out. With a
		// fresh context: at SIGTERM ctx has ended.
		rctx, cancel := context.WithTimeout(context.Background(), o.RenewDeadline)
		if err := releaseLease(rctx, &o); err != nil {
			o.logf("giving the Lease back: %v (the other masters take it when it expires)", err)
		}
		cancel()
		select {
		case <-unready:
		case <-ctx.Done():
		case <-time.After(o.RetryPeriod):
			// Lost the Lease: compete again after a pause, not in a
			// loop that hammers the API server.
		}
	}
	return nil
}

// waitReady waits until the local API server is ready; false when ctx
// ended first.
func waitReady(ctx context.Context, o *Options) bool {
	said := ""
	for {
		err := ready(ctx, o)
		if err == nil {
			return true
		}
		if err.Error() != said {
			o.logf("waiting for this master's API server to be ready: %v", err)
			said = err.Error()
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(o.RetryPeriod):
		}
	}
}

// ready is one readiness check, bounded so that a hung API server counts
// as a failure.
func ready(ctx context.Context, o *Options) error {
	cctx, cancel := context.WithTimeout(ctx, o.RenewDeadline)
	defer cancel()
	return o.Ready(cctx)
}

// watchReady checks the local API server every RetryPeriod and returns
// true after UnreadyAfter failures in a row; false when ctx ends.
func watchReady(ctx context.Context, o *Options) bool {
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(o.RetryPeriod):
		}
		err := ready(ctx, o)
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			fails = 0
			continue
		}
		if fails++; fails >= o.UnreadyAfter {
			o.logf("this master's API server is not ready (%d checks in a row: %v): giving the VIP up", fails, err)
			return true
		}
	}
}

// holder adds and removes the address for one election at a time. Its
// mutex orders the two: client-go starts OnStartedLeading in a goroutine
// of its own and calls OnStoppedLeading after cancelling that
// goroutine's context, so an Add still under way when the Lease is lost
// either finishes before the Remove or sees the context ended and does
// not happen.
type holder struct {
	o    *Options
	mu   sync.Mutex
	held bool
}

// take puts the address on the node and announces it, unless ctx (the
// term of the Lease) has ended.
func (h *holder) take(ctx context.Context) {
	h.mu.Lock()
	if ctx.Err() != nil {
		h.mu.Unlock()
		return
	}
	if err := h.o.Address.Add(); err != nil {
		h.mu.Unlock()
		// Holding the Lease without the address would keep every other
		// master from serving the VIP: give it up (the election ends,
		// and Run competes again after a pause).
		h.o.logf("holding the Lease, but adding %s failed: %v", h.o.Address, err)
		return
	}
	h.held = true
	h.mu.Unlock()
	h.o.logf("holding %s: this master answers for the VIP", h.o.Address)
	for i := range h.o.Announcements {
		if i > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(h.o.AnnounceEvery):
			}
		}
		h.mu.Lock()
		var err error
		if h.held && ctx.Err() == nil {
			err = h.o.Address.Announce()
		}
		h.mu.Unlock()
		if err != nil {
			h.o.logf("gratuitous ARP %d of %d for %s: %v", i+1, h.o.Announcements, h.o.Address, err)
		}
	}
}

// release takes the address off the node.
func (h *holder) release(why string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	was := h.held
	if err := h.o.Address.Remove(); err != nil {
		return fmt.Errorf("removing %s (%s): %w", h.o.Address, why, err)
	}
	h.held = false
	if was {
		h.o.logf("released %s (%s)", h.o.Address, why)
	}
	return nil
}

// elect runs one election until this master loses the Lease or ctx ends.
// The address is off when it returns.
func (h *holder) elect(ctx context.Context) error {
	o := h.o
	failed := make(chan error, 1)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:          lock(o),
		LeaseDuration: o.LeaseDuration,
		RenewDeadline: o.RenewDeadline,
		RetryPeriod:   o.RetryPeriod,
		// Run gives the Lease back itself, after the address is off
		// (client-go would give it back before calling
		// OnStoppedLeading, holding the address meanwhile for as long
		// as an unreachable API server takes to time out).
		ReleaseOnCancel: false,
		Name:            LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				h.take(lctx)
				h.mu.Lock()
				held := h.held
				h.mu.Unlock()
				if !held && lctx.Err() == nil {
					failed <- errors.New("could not add the address")
				}
			},
			OnStoppedLeading: func() {
				if err := h.release("the election ended"); err != nil {
					o.logf("%v", err)
				}
			},
			OnNewLeader: func(id string) {
				if id != o.Identity {
					o.logf("the VIP is with %s", id)
				}
			},
		},
	})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-failed:
			cancel()
		case <-rctx.Done():
		}
	}()
	le.Run(rctx)
	// OnStoppedLeading has run; a removal it could not do is tried
	// once more, and then it is an error.
	return h.release("the election ended")
}

func lock(o *Options) *resourcelock.LeaseLock {
	return &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: LeaseNamespace, Name: LeaseName},
		Client:     o.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: o.Identity},
	}
}

// releaseLease gives the Lease back if this master holds it, as
// client-go's own release does: no holder, and a duration of one second,
// so the next candidate takes it at its next try.
func releaseLease(ctx context.Context, o *Options) error {
	l := lock(o)
	rec, _, err := l.Get(ctx)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.HolderIdentity != o.Identity {
		return nil
	}
	now := metav1.NewTime(time.Now())
	// Update sends the resourceVersion Get read: if another master has
	// taken the Lease meanwhile, this fails instead of taking it back.
	return l.Update(ctx, resourcelock.LeaderElectionRecord{
		LeaseDurationSeconds: 1,
		RenewTime:            now,
		AcquireTime:          now,
		LeaderTransitions:    rec.LeaderTransitions,
	})
}
