//go:build vm

package vm

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln/internal/testutil"
	"kiln/qemu/vmcluster"
)

// The VIP's takeover, for TestHA once its masters can carry it: run
// there (session 8, 3 masters on 1 vCPU each under TCG, state disks),
// the first master's /readyz failed often enough that it dropped and
// retook the VIP every 10-60 s, and the probe below never found it
// answering within 3 minutes. vip.Options.UnreadyAfter is now 10; these
// helpers are not called until a run shows the VIP holding.

// vipProbeManifest is a pod on the worker, in the worker's own network
// namespace (hostNetwork: kube-system is exempt from Pod Security), that
// the check runs kiln-echo get in: the host cannot reach the cluster's
// L2, the worker can. SSL_CERT_FILE makes kiln-echo (Go) verify the API
// server against the cluster CA (the service account's ca.crt), so an
// answer at https://VIP:6443 also says the VIP is in the serving
// certificate.
const vipProbeManifest = `
apiVersion: v1
kind: Pod
metadata:
  name: kiln-vip-probe
  namespace: kube-system
  labels: {app: kiln-vip-probe}
spec:
  nodeName: %s
  hostNetwork: true
  containers:
  - name: probe
    image: kiln.local/kiln-echo:v1
    imagePullPolicy: Never
    args: [serve, -listen, "127.0.0.1:18090"]
    env:
    - {name: SSL_CERT_FILE, value: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt}
`

// vipReady finds the master that holds the VIP (in the masters' node
// API statuses, through their forwards), starts a probe pod on the
// worker and waits until the VIP answers /readyz there. It returns the
// holder and the probe.
func vipReady(t *testing.T, c *vmcluster.Cluster, worker string) (*vmcluster.Node, func() error) {
	t.Helper()
	vip := c.VIP()
	if vip == "" {
		t.Fatal("the cluster has no virtual IP (vmcluster.Options.VIP)")
	}
	kc := kubectl(c.Kubeconfig, fmt.Sprintf("https://127.0.0.1:%d", c.APIPort))
	ks := func(args ...string) (string, error) { return kc.Run(append([]string{"-n", "kube-system"}, args...)...) }

	holder := vipSingleHolder(t, c, "", 5*time.Minute)
	t.Logf("%s holds the VIP %s", holder.Name, vip)

	apply(t, func(args ...string) string { return kc.Must(t, args...) }, fmt.Sprintf(vipProbeManifest, worker))
	t.Cleanup(func() { ks("delete", "pod", "kiln-vip-probe", "--wait=false") })
	waitPods(t, ks, "app=kiln-vip-probe", 1, 5*time.Minute)
	readyz := "https://" + vip + ":6443/readyz"
	probe := func() error {
		out, err := ks("exec", "kiln-vip-probe", "--", "kiln-echo", "get", readyz)
		if err == nil && out != "ok" {
			err = fmt.Errorf("/readyz: %q", out)
		}
		return err
	}
	testutil.Eventually(t, 3*time.Minute, 3*time.Second, "the VIP answering /readyz from "+worker+" (TLS verified against the cluster CA)", probe)
	return holder, probe
}

// vipTakeover follows the VIP after its holder was powered off (at
// killed): it logs two figures, with no bound asserted on either: the
// time until another master reports holding the VIP, and until the VIP
// answers /readyz from the worker again (probe, from vipReady). Then
// exactly one master holds it, and the host's endpoint knows which.
func vipTakeover(t *testing.T, c *vmcluster.Cluster, holder *vmcluster.Node, killed time.Time, probe func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var (
		wg       sync.WaitGroup
		newOwner string
		heldAt   time.Duration
		answer   vipProbeResult
	)
	wg.Add(2)
	// Which master says it holds the VIP, twice a second.
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if hs := vipHolders(ctx, c); len(hs) > 0 && hs[0] != holder {
				newOwner, heldAt = hs[0].Name, time.Since(killed)
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	// /readyz through the VIP from the worker: a probe every 2 s, at
	// most 3 at once (one sent while the worker still has the dead
	// holder's MAC address for the VIP waits out kiln-echo's 10 s
	// timeout). The first that answers, and the last that failed
	// before it, bound when the VIP answered again.
	go func() {
		defer wg.Done()
		answer = vipProbeUntilAnswer(ctx, killed, probe)
	}()
	wg.Wait()
	if newOwner == "" {
		t.Fatalf("no other master reported holding the VIP within 5 minutes of %s's power-off", holder.Name)
	}
	t.Logf("FIGURE vip: %s powered off to %s reporting that it holds the VIP: %s (its node API asked every 0.5 s)", holder.Name, newOwner, heldAt.Round(100*time.Millisecond))
	if answer.ok == 0 {
		t.Fatalf("the VIP did not answer /readyz from the worker within 5 minutes of %s's power-off (last probe: %v)", holder.Name, answer.lastErr)
	}
	t.Logf("FIGURE vip: %s powered off to the VIP answering /readyz from the worker: by %s (that probe started at %s; the last that failed started at %s; %d probes failed)",
		holder.Name, answer.ok.Round(100*time.Millisecond), answer.okStarted.Round(100*time.Millisecond), answer.lastFailStarted.Round(100*time.Millisecond), answer.failed)

	// Exactly one master holds it, and the host's endpoint has seen
	// which (it sends the host's connections there).
	now := vipSingleHolder(t, c, holder.Name, time.Minute)
	testutil.Eventually(t, time.Minute, time.Second, "the host's endpoint seeing "+now.Name+" hold the VIP", testutil.Until(now.Name+" held", now.HoldsVIP))
}

func vipHolders(ctx context.Context, c *vmcluster.Cluster) []*vmcluster.Node {
	var out []*vmcluster.Node
	for _, n := range c.Masters() {
		vm := n.VM()
		if vm == nil {
			continue
		}
		select {
		case <-vm.Done():
			continue
		default:
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := c.NodeStatus(qctx, n)
		cancel()
		if err == nil && st.VIP != nil && st.VIP.Held {
			out = append(out, n)
		}
	}
	return out
}

// vipSingleHolder waits until exactly one running master, not the one
// named not, says it holds the VIP.
func vipSingleHolder(t *testing.T, c *vmcluster.Cluster, not string, d time.Duration) *vmcluster.Node {
	t.Helper()
	var holder *vmcluster.Node
	testutil.Eventually(t, d, time.Second, "one master holding the VIP", func() error {
		hs := vipHolders(context.Background(), c)
		var names []string
		for _, h := range hs {
			names = append(names, h.Name)
		}
		if len(hs) != 1 || hs[0].Name == not {
			return fmt.Errorf("held by [%s]", strings.Join(names, ", "))
		}
		holder = hs[0]
		return nil
	})
	return holder
}

// vipProbeResult is when the probes ran, since the holder's power-off.
type vipProbeResult struct {
	ok, okStarted   time.Duration // the first probe that answered: when it ended, when it started (0: none did)
	lastFailStarted time.Duration // the last probe that failed and started before okStarted
	failed          int
	lastErr         error
}

// vipProbeUntilAnswer starts probe every 2 s, at most 3 at once, until
// one answers or ctx ends, and says when they ran.
func vipProbeUntilAnswer(ctx context.Context, since time.Time, probe func() error) vipProbeResult {
	type run struct {
		started, ended time.Duration
		err            error
	}
	var (
		mu   sync.Mutex
		runs []run
		wg   sync.WaitGroup
		once sync.Once
	)
	slots := make(chan struct{}, 3)
	answered := make(chan struct{})
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for stop := false; !stop; {
		select {
		case slots <- struct{}{}:
			wg.Add(1)
			go func() {
				defer func() { <-slots; wg.Done() }()
				r := run{started: time.Since(since)}
				r.err = probe()
				r.ended = time.Since(since)
				mu.Lock()
				runs = append(runs, r)
				mu.Unlock()
				if r.err == nil {
					once.Do(func() { close(answered) })
				}
			}()
			select {
			case <-tick.C:
			case <-answered:
				stop = true
			case <-ctx.Done():
				stop = true
			}
		case <-answered:
			stop = true
		case <-ctx.Done():
			stop = true
		}
	}
	wg.Wait()
	var res vipProbeResult
	for _, r := range runs {
		if r.err == nil && (res.ok == 0 || r.started < res.okStarted) {
			res.ok, res.okStarted = r.ended, r.started
		}
	}
	for _, r := range runs {
		if r.err != nil {
			res.failed++
			res.lastErr = r.err
			if res.ok == 0 || r.started < res.okStarted {
				res.lastFailStarted = max(res.lastFailStarted, r.started)
			}
		}
	}
	return res
}
