//go:build vm

package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/pki"
	"kiln/qemu/vmcluster"
)

// TestRollingUpgrade boots a master and a worker from their qcow2 disks
// (image A) and upgrades the whole cluster to image B (another build: a
// distinct release) with kiln upgrade --all, while a Deployment with a
// PodDisruptionBudget serves requests the host sends through the API
// server: each node is drained (the budget holds an eviction until the
// replica elsewhere is Running), upgraded by kexec, Ready again and
// uncordoned; every node then reports image B. The requests that failed
// are counted, by the node being upgraded at the time: with one master,
// its upgrade takes the API (the requests' way in) down for a while.
//
// The nodes' certificates live 6 minutes (certificates.validity): before
// the upgrade, while the requests run, every certificate the master
// issues is renewed in place and the kubelets rotate theirs, with no
// request failing.
func TestRollingUpgrade(t *testing.T) {
	dir := t.TempDir()
	genCluster(t, dir)
	clusterDir := filepath.Join(dir, "cluster")
	const release = "kiln-test-b"
	build := func(role, out, format string, args ...string) string {
		cfg := filepath.Join(dir, role+".yaml")
		if err := os.WriteFile(cfg, []byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: "+role+"\ncertificates:\n  validity: 6m\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out = filepath.Join(dir, out)
		e2e.MustKiln(t, append([]string{"build", "--role", role, "--node-binary", e2e.Bin(e2e.KilnNodeBin), "--cluster", clusterDir,
			"--config", cfg, "--format", format, "--out", out}, args...)...)
		return out
	}
	master, worker := build("master", "master", "kernel,qcow2"), build("worker", "worker", "kernel,qcow2")
	masterB, workerB := build("master", "master-b", "kernel", "--release", release), build("worker", "worker-b", "kernel", "--release", release)

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	start := time.Now()
	stateDir := filepath.Join(dir, "vms")
	c, err := vmcluster.Up(ctx, vmcluster.Options{
		MasterImage: master, WorkerImage: worker, ClusterDir: clusterDir, StateDir: stateDir,
		Workers: 1, Disks: true, Progress: testLog{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("%s console (tail):\n%s", n.Name, n.VM().Console().Tail(60))
			}
		}
		c.Close()
	})
	if _, err := c.WriteState(stateDir); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, ctx, c, 20*time.Minute)
	t.Logf("FIGURE rolling upgrade: QEMU start to both nodes Ready, booted from their disks: %s", time.Since(start).Round(time.Second))

	kc := kubectl(c.Kubeconfig, fmt.Sprintf("https://127.0.0.1:%d", c.APIPort))
	apply(t, func(args ...string) string { return kc.Must(t, args...) }, echoManifest+budgetManifest)
	waitPods(t, kc.Run, "app=echo", 2, 10*time.Minute)

	// The requests: one every 200 ms through the API server's proxy to
	// the Service, each on a new connection.
	req := startRequests(t, c.Kubeconfig, fmt.Sprintf("https://127.0.0.1:%d/api/v1/namespaces/default/services/echo/proxy/", c.APIPort))
	phases := []phase{{node: "(the certificates' renewals)", from: time.Now()}}

	// Every certificate renewed once while the nodes run: those the
	// master issues (by the master, in place) and the kubelets' (rotated
	// by each kubelet): each one's end moves past where it was when first
	// seen.
	renewStart := time.Now()
	certs := func(n string) ([]nodeapi.Cert, error) {
		out, err := e2e.Kiln("certs", "--node", n, "--cluster", clusterDir, "--state", stateDir, "--json")
		if err != nil {
			return nil, fmt.Errorf("kiln certs --node %s: %v %s", n, err, out)
		}
		var cs nodeapi.Certs
		if err := json.Unmarshal([]byte(out), &cs); err != nil {
			return nil, err
		}
		var leaves []nodeapi.Cert
		for _, x := range cs.Certs {
			if x.RenewedBy != nodeapi.RenewedByNobody {
				leaves = append(leaves, x)
			}
		}
		return leaves, nil
	}
	first := map[string]time.Time{}
	testutil.Eventually(t, 12*time.Minute, 15*time.Second, "every certificate renewed while the nodes run", func() error {
		var waiting []string
		for _, n := range []string{vmcluster.MasterName, "kiln-worker-1"} {
			leaves, err := certs(n)
			if err != nil {
				return err
			}
			for _, x := range leaves {
				key := n + ": " + x.Name
				if x.Error != "" {
					waiting = append(waiting, key+" ("+x.Error+")")
					continue
				}
				was, seen := first[key]
				if !seen {
					first[key] = x.NotAfter
					waiting = append(waiting, key)
					continue
				}
				if !x.NotAfter.After(was) {
					waiting = append(waiting, key)
				}
			}
		}
		if len(waiting) > 0 {
			return fmt.Errorf("not renewed yet: %s", strings.Join(waiting, ", "))
		}
		return nil
	})
	t.Logf("FIGURE rolling upgrade: every certificate renewed (6m lifetimes) within %s of the requests' start, none failing", time.Since(renewStart).Round(time.Second))

	// kiln upgrade --all, its lines timestamped: which node was being
	// upgraded when a request failed.
	cmd := exec.Command(e2e.Bin(e2e.KilnBin), "upgrade", "--all", "--image", masterB, "--image", workerB,
		"--cluster", clusterDir, "--state", stateDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	upStart := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	phases = append(phases, phase{node: "(the rollout's start)", from: upStart})
	draining := regexp.MustCompile(`^node (\S+): draining`)
	var log strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintf(&log, "%6.1fs %s\n", time.Since(upStart).Seconds(), line)
		if m := draining.FindStringSubmatch(line); m != nil {
			phases = append(phases, phase{node: m[1], from: time.Now()})
		}
		if strings.HasPrefix(line, "cluster upgraded") {
			phases = append(phases, phase{node: "(after)", from: time.Now()})
		}
	}
	err = cmd.Wait()
	t.Logf("kiln upgrade --all:\n%s", log.String())
	if err != nil {
		t.Fatalf("kiln upgrade --all: %v", err)
	}
	took := time.Since(upStart)
	// A few more requests after the rollout.
	time.Sleep(5 * time.Second)
	results := req.stop()

	t.Logf("FIGURE rolling upgrade: kiln upgrade --all, 1 master and 1 worker: %s", took.Round(time.Second))
	for i, p := range phases {
		end := time.Now()
		if i+1 < len(phases) {
			end = phases[i+1].from
		}
		var n, failed int
		var first string
		for _, r := range results {
			if r.at.Before(p.from) || !r.at.Before(end) {
				continue
			}
			n++
			if r.err != "" {
				failed++
				if first == "" {
					first = r.err
				}
			}
		}
		t.Logf("FIGURE rolling upgrade: while %s: %d requests, %d failed %s", p.node, n, failed, first)
		if (p.node == "kiln-worker-1" || strings.HasPrefix(p.node, "(the certificates")) && failed > 0 {
			// Renewals restart nothing; and the master's replica serves
			// alone while the worker's is evicted and the worker
			// reboots: nothing should fail.
			t.Errorf("%d requests failed %s: %s", failed, p.node, first)
		}
	}
	for _, n := range []string{vmcluster.MasterName, "kiln-worker-1"} {
		outS, err := e2e.Kiln("status", "--node", n, "--cluster", clusterDir, "--state", stateDir, "-o", "json")
		var st nodeapi.Status
		if err != nil || json.Unmarshal([]byte(outS), &st) != nil || st.Image == nil {
			t.Errorf("kiln status --node %s: %v %s", n, err, outS)
			continue
		}
		if st.Image.Release != release || st.Image.Slot != "b" || st.Image.Default != "b" {
			t.Errorf("node %s after the rollout: %+v", n, st.Image)
		}
	}
	if out := kc.Must(t, "get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.unschedulable}{"\n"}{end}`); strings.Contains(out, "true") {
		t.Errorf("a node left cordoned:\n%s", out)
	}
	waitPods(t, kc.Run, "app=echo", 2, 5*time.Minute)
}

// budgetManifest keeps one echo replica available through drains.
const budgetManifest = `
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: echo}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: echo}}
`

type phase struct {
	node string
	from time.Time
}

type result struct {
	at  time.Time
	err string
}

type requester struct {
	mu      sync.Mutex
	results []result
	done    chan struct{}
	wg      sync.WaitGroup
}

// startRequests GETs url with the kubeconfig's admin credentials every
// 200 ms, on a new connection each time, until stop.
func startRequests(t *testing.T, kubeconfig, url string) *requester {
	t.Helper()
	_, cfg, err := pki.LoadKubeconfigTLS(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	r := &requester{done: make(chan struct{})}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.done:
				return
			case <-tick.C:
			}
			res := result{at: time.Now()}
			resp, err := hc.Get(url)
			if err != nil {
				res.err = err.Error()
			} else {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "echo-") {
					res.err = fmt.Sprintf("%s %.80s", resp.Status, body)
				}
			}
			r.mu.Lock()
			r.results = append(r.results, res)
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *requester) stop() []result {
	close(r.done)
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]result(nil), r.results...)
}
