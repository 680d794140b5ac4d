//go:build integration

// Package host is the second test tier: the master components run as real
// processes on loopback under the real supervisor (bin/kiln-node up), and
// upstream kubectl talks to them. Run with `make test-host`.
package host

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
)

// The node binds 127.0.0.2 on ports away from the defaults, so a developer's
// own `make up` on 127.0.0.1 does not collide with the tests.
const (
	address = "127.0.0.2"
	apiPort = 16443
)

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

// poll is how often the tests here ask again.
const poll = 250 * time.Millisecond

// genCluster makes a cluster directory in dir whose API is the node's.
func genCluster(t *testing.T, dir string) string {
	t.Helper()
	return e2e.GenCluster(t, dir, e2e.Cluster{Name: "hosttest", Endpoint: fmt.Sprintf("%s:%d", address, apiPort)})
}

// node is one running `kiln-node up`.
type node struct {
	t       *testing.T
	cmd     *exec.Cmd
	dataDir string
	out     testutil.SyncBuffer
	exited  chan struct{}
	err     error
}

func startNode(t *testing.T, clusterDir, dataDir, config string) *node {
	t.Helper()
	n := &node{t: t, dataDir: dataDir, exited: make(chan struct{})}
	n.cmd = exec.Command(e2e.Bin(e2e.KilnNodeBin), "up", "--cluster", clusterDir, "--data-dir", dataDir, "--config", config)
	pr, pw := io.Pipe()
	n.cmd.Stdout, n.cmd.Stderr = pw, pw
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 1<<20), 1<<20)
		for s.Scan() {
			n.out.Write([]byte(s.Text() + "\n"))
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
			t.Logf("kiln-node output (last 8 KiB):\n%s", testutil.TailBytes(n.output(), 8192))
		}
	})
	return n
}

func (n *node) output() string { return n.out.String() }

// waitReady polls /readyz through kubectl until it answers ok.
func (n *node) waitReady(kubeconfig string, timeout time.Duration) time.Duration {
	n.t.Helper()
	start := time.Now()
	testutil.Eventually(n.t, timeout, poll, "kube-apiserver /readyz ok", func() error {
		select {
		case <-n.exited:
			n.t.Fatalf("kiln-node exited: %v\n%s", n.err, testutil.TailBytes(n.output(), 4096))
		default:
		}
		out, err := kubectl(kubeconfig).Run("get", "--raw", "/readyz")
		if err != nil {
			return err
		}
		if out != "ok" {
			return fmt.Errorf("readyz: %q", out)
		}
		return nil
	})
	return time.Since(start)
}

func (n *node) status() nodeapi.Status {
	n.t.Helper()
	out, err := exec.Command(e2e.Bin(e2e.KilnNodeBin), "status", "--data-dir", n.dataDir, "-o", "json").Output()
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

// kubectl runs kubectl as the cluster's admin.
func kubectl(kubeconfig string) e2e.Kubectl {
	return e2e.Kubectl{Kubeconfig: kubeconfig, Timeout: 30 * time.Second}
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
