//go:build vm

package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/qemu"
	"kiln/qemu/vmcluster"
)

// genCluster makes the cluster directory dir/cluster.
func genCluster(t *testing.T, dir string) {
	t.Helper()
	e2e.GenCluster(t, dir, e2e.Cluster{Name: "vmtest"})
}

// buildImage runs `kiln build` for a role into dir and returns the image dir.
func buildImage(t *testing.T, dir, role string, formats ...string) string {
	t.Helper()
	return buildImageConfig(t, dir, role, "", formats...)
}

// buildControlPlane builds a master image without the worker stack
// (runPods: false): the tests of the image and of PID 1 need only the
// control plane, and boot faster without the rest. TestCluster boots the
// default master.
func buildControlPlane(t *testing.T, dir string, formats ...string) string {
	t.Helper()
	cfg := filepath.Join(dir, "control-plane.yaml")
	if err := os.WriteFile(cfg, []byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: master\nrunPods: false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return buildImageConfig(t, dir, "master", cfg, formats...)
}

func buildImageConfig(t *testing.T, dir, role, config string, formats ...string) string {
	t.Helper()
	out := filepath.Join(dir, role)
	if len(formats) == 0 {
		formats = []string{"kernel"}
	}
	args := []string{"build", "--role", role, "--node-binary", e2e.Bin(e2e.KilnNodeBin),
		"--cluster", filepath.Join(dir, "cluster"), "--format", strings.Join(formats, ","), "--out", out}
	if config != "" {
		args = append(args, "--config", config)
	}
	e2e.MustKiln(t, args...)
	return out
}

func bootKernel(t *testing.T, image string, extra []string, opts ...qemu.Option) *qemu.VM {
	t.Helper()
	cmdline, err := os.ReadFile(filepath.Join(image, "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	args := append(strings.Fields(string(cmdline)), extra...)
	base := []qemu.Option{
		qemu.WithKernel(filepath.Join(image, "vmlinuz")),
		qemu.WithInitramfs(filepath.Join(image, "initramfs.img")),
		qemu.WithoutDefaultAppend(),
		qemu.WithAppend(args...),
		qemu.WithSerialLog(filepath.Join(t.TempDir(), "console.log")),
	}
	vm, err := qemu.Start(context.Background(), append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("console (tail):\n%s", vm.Console().Tail(60))
		}
	})
	return vm
}

func expect(t *testing.T, vm *qemu.VM, what string, timeout time.Duration) string {
	t.Helper()
	line, err := vm.Expect(context.Background(), what, timeout)
	if err != nil {
		t.Fatalf("console: waiting for %q: %v", what, err)
	}
	return line
}

// kubectl talks to a VM's API from the host, through a forwarded port.
func kubectl(kubeconfig, server string) e2e.Kubectl {
	return e2e.Kubectl{Kubeconfig: kubeconfig, Server: server, Flags: []string{"--request-timeout=50s"}}
}

// waitReadyz polls the API's /readyz from the host until it answers ok.
func waitReadyz(t *testing.T, kubeconfig, server string) {
	t.Helper()
	testutil.Eventually(t, 2*time.Minute, time.Second, "/readyz from the host", func() error {
		out, err := kubectl(kubeconfig, server).Run("get", "--raw", "/readyz")
		if err == nil && out != "ok" {
			err = fmt.Errorf("%q", out)
		}
		return err
	})
}

// testLog sends progress lines to t.Log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func waitNodes(t *testing.T, ctx context.Context, c *vmcluster.Cluster, d time.Duration, names ...string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := c.WaitReady(wctx, names...); err != nil {
		t.Fatal(err)
	}
}

func apply(t *testing.T, mustK func(...string) string, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(f, []byte(manifest), 0o644)
	mustK("apply", "-f", f)
}

type pod struct{ name, node, ip string }

// waitPods waits until n pods with the label are Running and ready.
func waitPods(t *testing.T, k func(...string) (string, error), selector string, n int, d time.Duration) []pod {
	t.Helper()
	var pods []pod
	testutil.Eventually(t, d, 3*time.Second, fmt.Sprintf("pods %s: want %d Running and ready", selector, n), func() error {
		out, err := k("get", "pods", "-l", selector, "-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.status.phase} {.status.containerStatuses[0].ready}{"\n"}{end}`)
		if err != nil {
			return err
		}
		pods = nil
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) == 5 && f[3] == "Running" && f[4] == "true" {
				pods = append(pods, pod{f[0], f[1], f[2]})
			}
		}
		if len(pods) != n {
			return fmt.Errorf("have:\n%s", out)
		}
		return nil
	})
	return pods
}

// vmAppend passes KILN_VM_APPEND (e.g. kiln.verbose) to every VM's kernel.
func vmAppend() []string { return strings.Fields(os.Getenv("KILN_VM_APPEND")) }
