package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/images/builder"
)

// fakeKernelImage is an image directory with the kernel format, for the
// cluster whose CA hash is caHash.
func fakeKernelImage(t *testing.T, role, caHash string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), role)
	os.MkdirAll(dir, 0o755)
	m := builder.Manifest{ID: "img2", Role: node.Role(role), Release: "v2", ClusterCAHash: caHash, Cmdline: []string{"console=ttyS0"}}
	for _, f := range []string{"vmlinuz", "initramfs.img", "cmdline"} {
		m.Artifacts = append(m.Artifacts, builder.Artifact{Format: "kernel", Path: f})
		os.WriteFile(filepath.Join(dir, f), []byte("the "+f), 0o644)
	}
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestReadUpgradeImage(t *testing.T) {
	clusterDir := filepath.Join(t.TempDir(), "cluster")
	if code, _, errOut := kiln(t, "gen", "cluster", "--name", "c", "--out", clusterDir); code != 0 {
		t.Fatal(errOut)
	}
	cl, err := cluster.LoadForWorker(clusterDir)
	if err != nil {
		t.Fatal(err)
	}
	img, err := readUpgradeImage(fakeKernelImage(t, "worker", cl.CAHash), clusterDir)
	if err != nil {
		t.Fatal(err)
	}
	if img.up.Role != "worker" || img.up.Release != "v2" || img.up.KernelSize != int64(len("the vmlinuz")) || len(img.up.InitrdSHA256) != 64 {
		t.Errorf("%+v", img.up)
	}

	// The stream: the description, then the kernel and the initramfs.
	var buf bytes.Buffer
	if err := writeUpgradeTar(&buf, img); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		data, _ := io.ReadAll(tr)
		if h.Name == nodeapi.UpgradeManifestName {
			var u nodeapi.Upgrade
			if err := json.Unmarshal(data, &u); err != nil || u.ImageID != "img2" {
				t.Errorf("%s: %+v %v", h.Name, u, err)
			}
		}
	}
	if strings.Join(names, ",") != "upgrade.json,vmlinuz,initrd.img" {
		t.Errorf("entries %v", names)
	}

	// Another cluster's image, or one from before releases were recorded:
	// refused before the node is asked anything.
	if _, err := readUpgradeImage(fakeKernelImage(t, "worker", "sha256:"+strings.Repeat("0", 64)), clusterDir); err == nil || !strings.Contains(err.Error(), "another cluster") {
		t.Errorf("another cluster's image: %v", err)
	}
	if _, err := readUpgradeImage(fakeKernelImage(t, "worker", ""), clusterDir); err == nil || !strings.Contains(err.Error(), "rebuild it") {
		t.Errorf("an old image: %v", err)
	}
}

func TestUpgradeUsage(t *testing.T) {
	if code, _, errOut := kiln(t, "upgrade", "--node", "n1"); code != 2 || !strings.Contains(errOut, "--image is required") {
		t.Errorf("%d %s", code, errOut)
	}
	if code, _, errOut := kiln(t, "build", "--role", "worker", "--release", "a b"); code != 2 || !strings.Contains(errOut, "--release") {
		t.Errorf("%d %s", code, errOut)
	}
}
