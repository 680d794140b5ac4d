//go:build integration

package host

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
)

var masterComponents = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// TestMasterLifecycle runs one master through its life: up, use, a killed
// apiserver, encryption at rest, SIGTERM, up again on the same data, and a
// misconfigured component crash-looping beside healthy ones.
func TestMasterLifecycle(t *testing.T) {
	dir := t.TempDir()
	clusterDir := genCluster(t, dir)
	kc := filepath.Join(clusterDir, "admin.kubeconfig")
	dataDir := filepath.Join(dir, "data")
	config := writeConfig(t, dir, "")

	n := startNode(t, clusterDir, dataDir, config)
	took := n.waitReady(kc, 3*time.Minute)
	t.Logf("figure: up to /readyz ok: %s", took.Round(10*time.Millisecond))

	t.Run("all components ready", func(t *testing.T) {
		testutil.Eventually(t, time.Minute, poll, "every component ready", func() error {
			return allReady(n.status())
		})
		table, err := exec.Command(e2e.Bin(e2e.KilnNodeBin), "status", "--data-dir", dataDir).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range masterComponents {
			if !strings.Contains(string(table), c) {
				t.Errorf("status table lacks %s:\n%s", c, table)
			}
		}
		t.Logf("status:\n%s", table)

		// The same table from the host CLI, over TLS with the admin
		// certificate; refused with another cluster's.
		remote, err := e2e.Kiln("status", "--node", address, "--cluster", clusterDir)
		if err != nil || !strings.Contains(remote, "kube-apiserver") || !strings.Contains(remote, "timeline:") {
			t.Errorf("kiln status --node %s: %v\n%s", address, err, remote)
		}
		other := genCluster(t, t.TempDir())
		if out, err := e2e.Kiln("status", "--node", address, "--cluster", other); err == nil {
			t.Errorf("another cluster's admin got the status:\n%s", out)
		}
	})

	t.Run("version", func(t *testing.T) {
		out := kubectl(kc).Must(t, "get", "--raw", "/version")
		if !strings.Contains(out, `"gitVersion": "v1.37.`) {
			t.Fatalf("/version: %s", out)
		}
	})

	t.Run("configmap round trip", func(t *testing.T) {
		kubectl(kc).Must(t, "create", "configmap", "kiln-test", "--from-literal=greeting=hello-kiln")
		out := kubectl(kc).Must(t, "get", "configmap", "kiln-test", "-o", "jsonpath={.data.greeting}")
		if out != "hello-kiln" {
			t.Fatalf("read back %q", out)
		}
	})

	t.Run("secrets encrypted at rest", func(t *testing.T) {
		const canary = "kiln-plaintext-canary-7f3a9c"
		kubectl(kc).Must(t, "create", "secret", "generic", "kiln-canary", "--from-literal=v="+canary)
		// The apiserver answers after etcd has the write in its WAL, so
		// the bytes are on disk now.
		plain, sealed := scan(t, filepath.Join(dataDir, "etcd"), canary, "k8s:enc:secretbox:v1:kiln-1")
		if len(plain) > 0 {
			t.Fatalf("secret value readable in plain text in %v", plain)
		}
		if len(sealed) == 0 {
			t.Fatal("no secretbox-encrypted value found in etcd's files: is encryption at rest on?")
		}
	})

	t.Run("kill -9 kube-apiserver is restarted", func(t *testing.T) {
		before := service(n.status(), "kube-apiserver")
		if before.PID == 0 {
			t.Fatal("no apiserver pid in status")
		}
		if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 3*time.Minute, poll, "apiserver restarted and ready", func() error {
			s := service(n.status(), "kube-apiserver")
			if s.Restarts < before.Restarts+1 || s.PID == before.PID || s.State != nodeapi.StateReady {
				return errorf("apiserver state %s pid %d restarts %d", s.State, s.PID, s.Restarts)
			}
			return nil
		})
		if out := kubectl(kc).Must(t, "get", "configmap", "kiln-test", "-o", "jsonpath={.data.greeting}"); out != "hello-kiln" {
			t.Fatalf("after restart read %q", out)
		}
		s := service(n.status(), "kube-apiserver")
		if !strings.Contains(s.LastExit, "killed") {
			t.Errorf("last exit %q does not say it was killed", s.LastExit)
		}
	})

	t.Run("SIGTERM stops in reverse order, exit 0, no orphans", func(t *testing.T) {
		if err := n.stop(2 * time.Minute); err != nil {
			t.Fatalf("exit: %v", err)
		}
		order := stopOrder(n.output())
		// The reverse of the start order: the addons task and the
		// apiserver's clients (csr-approver, local-storage,
		// controller-manager and scheduler, siblings that may stop in any
		// order; metrics-server before the addons it waits for) first,
		// then the apiserver, then etcd.
		want := []string{"addons", "csr-approver", "kube-controller-manager", "kube-scheduler", "local-storage", "metrics-server", "kube-apiserver", "etcd"}
		k := len(want) - 2
		if len(order) != len(want) || !slices.Equal(slices.Sorted(slices.Values(order[:k])), want[:k]) ||
			order[k] != want[k] || order[k+1] != want[k+1] ||
			slices.Index(order, "metrics-server") > slices.Index(order, "addons") {
			t.Fatalf("stop order %v, want %v (the first %d in any order, metrics-server before addons)", order, want, k)
		}
		if left := processesUsing(dataDir); len(left) > 0 {
			t.Fatalf("processes left behind:\n%s", strings.Join(left, "\n"))
		}
	})

	// Up again on the same data dir, this time with a scheduler flag that
	// upstream rejects: the scheduler crash-loops, the rest serve.
	t.Run("restart keeps state; a broken component crash-loops alone", func(t *testing.T) {
		config := writeConfig(t, dir, "extraArgs:\n  kube-scheduler:\n    no-such-flag: \"1\"\n")
		n2 := startNode(t, clusterDir, dataDir, config)
		n2.waitReady(kc, 3*time.Minute)
		if out := kubectl(kc).Must(t, "get", "configmap", "kiln-test", "-o", "jsonpath={.data.greeting}"); out != "hello-kiln" {
			t.Fatalf("after restart read %q", out)
		}
		testutil.Eventually(t, 2*time.Minute, poll, "scheduler in crash-loop", func() error {
			s := service(n2.status(), "kube-scheduler")
			if s.State != nodeapi.StateCrashLoop || s.Restarts < 3 {
				return errorf("scheduler %s after %d restarts", s.State, s.Restarts)
			}
			return nil
		})
		st := n2.status()
		for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
			if s := service(st, c); s.State != nodeapi.StateReady || s.Restarts != 0 {
				t.Errorf("%s: %s with %d restarts while the scheduler crash-loops", c, s.State, s.Restarts)
			}
		}
		gaps := restartGaps(st, "kube-scheduler")
		t.Logf("scheduler restart gaps: %v", gaps)
		for i := 1; i < len(gaps); i++ {
			if gaps[i] <= gaps[i-1] {
				t.Errorf("restart delays do not grow: %v", gaps)
			}
		}
		if !strings.Contains(n2.output(), "no-such-flag") {
			t.Error("the scheduler's own error (unknown flag) is not on the console")
		}
		if err := n2.stop(2 * time.Minute); err != nil {
			t.Fatalf("exit: %v", err)
		}
		if left := processesUsing(dataDir); len(left) > 0 {
			t.Fatalf("processes left behind:\n%s", strings.Join(left, "\n"))
		}
	})
}

func allReady(st nodeapi.Status) error {
	for _, c := range masterComponents {
		if s := service(st, c); s.State != nodeapi.StateReady {
			return errorf("%s is %s", c, s.State)
		}
	}
	return nil
}

// scan reports the files under dir containing each needle.
func scan(t *testing.T, dir string, plainNeedle, sealedNeedle string) (plain, sealed []string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(plainNeedle)) {
			plain = append(plain, path)
		}
		if bytes.Contains(b, []byte(sealedNeedle)) {
			sealed = append(sealed, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return plain, sealed
}

// restartGaps are the delays between each exit of a service and its next
// start, from the supervisor's timeline: the backoff, without the time the
// process itself took to fail.
func restartGaps(st nodeapi.Status, name string) []time.Duration {
	var gaps []time.Duration
	var exited time.Duration = -1
	for _, e := range st.Timeline {
		if e.Service != name {
			continue
		}
		switch {
		case strings.HasPrefix(e.What, "exited"):
			exited = e.At
		case e.What == "started" && exited >= 0:
			gaps = append(gaps, e.At-exited)
			exited = -1
		}
	}
	return gaps
}
