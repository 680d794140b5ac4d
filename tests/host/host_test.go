//go:build integration

// Package host is the second test tier: the master components run as real
// processes on loopback under the real supervisor (bin/kiln-node up), and
// upstream kubectl talks to them. Run with `make test-host`.
package host

import (
	"kiln/configs/nodeapi"

	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binDir = flag.String("bin", "../../bin", "directory holding kiln, kiln-node and kubectl")

// The node binds 127.0.0.2 on ports away from the defaults, so a developer's
// own `make up` on 127.0.0.1 does not collide with the tests.
const (
	address = "127.0.0.2"
	apiPort = 16443
)

func bin(name string) string {
	p, err := filepath.Abs(filepath.Join(*binDir, name))
	if err != nil {
		panic(err)
	}
	return p
}

func writeConfig(t *testing.T, dir string, extra string) string {
	t.Helper()
	p := filepath.Join(dir, "node.yaml")
	cfg := fmt.Sprintf(`apiVersion: kiln.dev/v1alpha1
kind: NodeConfig
role: master
hostname: host-test
address: %s
ports:
  apiServer: %d
  etcdClient: 12379
  etcdPeer: 12380
  controllerManager: 20257
  scheduler: 20259
%s`, address, apiPort, extra)
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func genCluster(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "cluster")
	cmd := exec.Command(bin("kiln"), "gen", "cluster", "--name", "hosttest", "--out", out,
		"--endpoint", fmt.Sprintf("%s:%d", address, apiPort))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kiln gen cluster: %v\n%s", err, b)
	}
	return out
}

// node is one running `kiln-node up`.
type node struct {
	t       *testing.T
	cmd     *exec.Cmd
	dataDir string
	mu      sync.Mutex
	out     bytes.Buffer
	exited  chan struct{}
	err     error
}

func startNode(t *testing.T, clusterDir, dataDir, config string) *node {
	t.Helper()
	n := &node{t: t, dataDir: dataDir, exited: make(chan struct{})}
	n.cmd = exec.Command(bin("kiln-node"), "up", "--cluster", clusterDir, "--data-dir", dataDir, "--config", config)
	pr, pw := io.Pipe()
	n.cmd.Stdout, n.cmd.Stderr = pw, pw
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 1<<20), 1<<20)
		for s.Scan() {
			n.mu.Lock()
			n.out.WriteString(s.Text() + "\n")
			n.mu.Unlock()
		}
	}()
	go func() {
		n.err = n.cmd.Wait()
		pw.Close()
		close(n.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-n.exited:
		default:
			n.cmd.Process.Kill()
			<-n.exited
		}
		if t.Failed() {
			t.Logf("kiln-node output (last 8 KiB):\n%s", tail(n.output(), 8192))
		}
	})
	return n
}

func (n *node) output() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.out.String()
}

func tail(s string, max int) string {
	if len(s) > max {
		return s[len(s)-max:]
	}
	return s
}

// waitReady polls /readyz through kubectl until it answers ok.
func (n *node) waitReady(kubeconfig string, timeout time.Duration) time.Duration {
	n.t.Helper()
	start := time.Now()
	eventually(n.t, timeout, "kube-apiserver /readyz ok", func() error {
		select {
		case <-n.exited:
			n.t.Fatalf("kiln-node exited: %v\n%s", n.err, tail(n.output(), 4096))
		default:
		}
		out, err := kubectl(kubeconfig, "get", "--raw", "/readyz")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "ok" {
			return fmt.Errorf("readyz: %q", out)
		}
		return nil
	})
	return time.Since(start)
}

func (n *node) status() nodeapi.Status {
	n.t.Helper()
	out, err := exec.Command(bin("kiln-node"), "status", "--data-dir", n.dataDir, "-o", "json").Output()
	if err != nil {
		n.t.Fatalf("kiln-node status: %v", err)
	}
	var st nodeapi.Status
	if err := json.Unmarshal(out, &st); err != nil {
		n.t.Fatalf("status json: %v\n%s", err, out)
	}
	return st
}

func service(st nodeapi.Status, name string) nodeapi.ServiceStatus {
	for _, s := range st.Services {
		if s.Name == name {
			return s
		}
	}
	return nodeapi.ServiceStatus{}
}

// stop sends SIGTERM and waits for the exit.
func (n *node) stop(timeout time.Duration) error {
	n.t.Helper()
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
		return n.err
	case <-time.After(timeout):
		n.t.Fatalf("kiln-node did not exit within %s of SIGTERM", timeout)
		return nil
	}
}

func kubectl(kubeconfig string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin("kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func mustKubectl(t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	out, err := kubectl(kubeconfig, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// eventually polls cond until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

// processesUsing lists live processes whose command line mentions dir: every
// component's arguments name the data dir, so this finds orphans.
func processesUsing(dir string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if strings.Contains(string(stat), ") Z ") {
			continue // a zombie is not running; its parent's Wait is racing us
		}
		found = append(found, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
	}
	return found
}

// stopOrder reads the line `kiln-node up` prints when everything stopped.
func stopOrder(output string) []string {
	const marker = "all components stopped, in order: "
	i := strings.LastIndex(output, marker)
	if i < 0 {
		return nil
	}
	line := output[i+len(marker):]
	if j := strings.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	return strings.Split(strings.TrimSpace(line), ", ")
}
