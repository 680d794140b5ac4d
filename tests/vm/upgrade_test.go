//go:build vm

package vm

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln/configs/image"
	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/qemu"
)

// upgradeScenarios upgrades the qcow2 master vm (booted from slot a of
// its disk, its node API forwarded) in place, from the host: images for
// another role or cluster are refused before anything is sent; an image
// whose PID 1 stops before ready (a kernel argument naming a missing
// config) is rolled back by the node itself; image B, another build of the
// same control plane, is booted by kexec and becomes the default slot,
// which a reboot keeps; the cluster's data lives through all of it.
func upgradeScenarios(t *testing.T, dir string, vm *qemu.VM, kc, server string) {
	clusterDir := filepath.Join(dir, "cluster")
	node := fmt.Sprintf("127.0.0.1:%d", vm.HostPort(nodeapi.Port))
	release := "kiln-test-b"
	b := buildControlPlaneRelease(t, dir, "b", release)

	status := func() (nodeapi.Status, error) {
		var st nodeapi.Status
		out, err := e2e.Kiln("status", "--node", node, "--cluster", clusterDir, "-o", "json")
		if err != nil {
			return st, fmt.Errorf("kiln status: %v %s", err, out)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return st, err
		}
		if st.Image == nil {
			return st, fmt.Errorf("no image in the node's status")
		}
		return st, nil
	}
	mustImage := func(t *testing.T) *nodeapi.ImageStatus {
		t.Helper()
		st, err := status()
		if err != nil {
			t.Fatal(err)
		}
		return st.Image
	}
	upgrade := func(img string, extra ...string) (string, time.Duration, error) {
		start := time.Now()
		args := append([]string{"upgrade", "--node", node, "--cluster", clusterDir, "--image", img}, extra...)
		out, err := e2e.Kiln(args...)
		t.Logf("kiln %s:\n%s", strings.Join(args, " "), out)
		return out, time.Since(start), err
	}

	if im := mustImage(t); im.Slot != image.SlotA || im.Default != image.SlotA || im.Boot != image.BootQcow2BIOS {
		t.Fatalf("before any upgrade: %+v", im)
	}

	t.Run("wrong role or cluster refused", func(t *testing.T) {
		worker := editImage(t, b, filepath.Join(dir, "as-worker"), func(m map[string]any) { m["role"] = "worker" })
		if out, _, err := upgrade(worker); err == nil || !strings.Contains(out, "is a worker image") {
			t.Errorf("a worker image for a master: %v\n%s", err, out)
		}
		foreign := editImage(t, b, filepath.Join(dir, "foreign"), func(m map[string]any) { m["clusterCAHash"] = "sha256:" + strings.Repeat("0", 64) })
		if out, _, err := upgrade(foreign); err == nil || !strings.Contains(out, "belongs to another cluster") {
			t.Errorf("another cluster's image: %v\n%s", err, out)
		}
		if im := mustImage(t); im.LastUpgrade != nil || im.Slots[image.SlotB].ImageID != "" {
			t.Errorf("a refused upgrade left a trace: %+v", im)
		}
	})

	t.Run("broken image rolls back", func(t *testing.T) {
		broken := editImage(t, b, filepath.Join(dir, "broken"), func(m map[string]any) {
			m["release"] = "kiln-test-broken"
			m["cmdline"] = append(m["cmdline"].([]any), "kiln.config=/etc/kiln/missing.yaml")
		})
		out, took, err := upgrade(broken, "--trial-timeout", "10m")
		if err == nil {
			t.Fatalf("the upgrade to a broken image succeeded:\n%s", out)
		}
		if !strings.Contains(out, "rolled back") || !strings.Contains(out, "missing.yaml") {
			t.Errorf("kiln upgrade does not say why it was rolled back:\n%s", out)
		}
		if !strings.Contains(vm.Console().Output(), "UPGRADE FAILED") {
			t.Errorf("no UPGRADE FAILED line on the console")
		}
		t.Logf("figure: rollback from a broken image, upgrade start to the node back on its slot: %s", took.Round(time.Second))
		im := mustImage(t)
		if im.Slot != image.SlotA || im.Default != image.SlotA || im.LastUpgrade == nil || im.LastUpgrade.Result != nodeapi.TrialRolledBack {
			t.Errorf("after the rollback: %+v %+v", im, im.LastUpgrade)
		}
		waitReadyz(t, kc, server)
	})

	t.Run("upgrade to image B", func(t *testing.T) {
		out, took, err := upgrade(b)
		if err != nil {
			t.Fatalf("kiln upgrade: %v\n%s", err, out)
		}
		t.Logf("figure: upgrade of a master, upgrade start to slot b the default: %s", took.Round(time.Second))
		im := mustImage(t)
		if im.Slot != image.SlotB || im.Default != image.SlotB || im.Release != release || im.Trial {
			t.Errorf("after the upgrade: %+v", im)
		}
		if !strings.Contains(vm.Console().Output(), "reboot by kexec") {
			t.Errorf("the node did not reboot by kexec")
		}
		waitReadyz(t, kc, server)
		if out, err := kubectl(kc, server).Run("get", "configmap", "survivor", "-o", "jsonpath={.data.k}"); err != nil || out != "kept" {
			t.Errorf("the cluster's data after the upgrade: %q %v", out, err)
		}
	})

	t.Run("reboot keeps image B", func(t *testing.T) {
		before, err := status()
		if err != nil {
			t.Fatal(err)
		}
		e2e.MustKiln(t, "reboot", "--node", node, "--cluster", clusterDir)
		testutil.Eventually(t, 8*time.Minute, 3*time.Second, "the node back after its reboot", func() error {
			st, err := status()
			if err != nil {
				return err
			}
			if !st.Started.After(before.Started) {
				return fmt.Errorf("still the boot before")
			}
			if st.Image.Slot != image.SlotB || st.Image.Release != release {
				return fmt.Errorf("booted %+v", st.Image)
			}
			return nil
		})
		waitReadyz(t, kc, server)
	})
}

// buildControlPlaneRelease builds the control-plane master's kernel format
// again with another release: another build of the same image.
func buildControlPlaneRelease(t *testing.T, dir, name, release string) string {
	t.Helper()
	cfg := filepath.Join(dir, "control-plane.yaml")
	out := filepath.Join(dir, name)
	e2e.MustKiln(t, "build", "--role", "master", "--node-binary", e2e.Bin(e2e.KilnNodeBin),
		"--cluster", filepath.Join(dir, "cluster"), "--config", cfg, "--format", "kernel", "--release", release, "--out", out)
	return out
}

// editImage copies an image directory (its files linked) with its
// manifest changed by edit.
func editImage(t *testing.T, from, to string, edit func(map[string]any)) string {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() || e.Name() == image.ManifestFile {
			continue
		}
		if err := os.Link(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(filepath.Join(from, image.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	data, _ = json.Marshal(m)
	if err := os.WriteFile(filepath.Join(to, image.ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return to
}
