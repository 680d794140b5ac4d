package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeBin points -bin at a directory whose kiln and kubectl print their
// arguments (kubectl also a line on stderr, and fails on "fail").
func fakeBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, script string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(KilnBin, `echo "$@"; [ "$1" != fail ]`+"\n")
	write(KubectlBin, `echo "  $@  "; echo "warning on stderr" >&2; for a; do [ "$a" != fail ] || exit 3; done`+"\n")
	old := *binDir
	*binDir = dir
	t.Cleanup(func() { *binDir = old })
	return dir
}

func TestBin(t *testing.T) {
	dir := fakeBin(t)
	if got := Bin(KilnNodeBin); got != filepath.Join(dir, "kiln-node") {
		t.Errorf("Bin: %s", got)
	}
	*binDir = "relative"
	if got := Bin(KilnBin); !filepath.IsAbs(got) || !strings.HasSuffix(got, "/relative/kiln") {
		t.Errorf("Bin of a relative -bin: %s, want an absolute path", got)
	}
}

func TestKilnAndGenCluster(t *testing.T) {
	fakeBin(t)
	if out, err := Kiln("fail", "x"); err == nil || out != "fail x\n" {
		t.Errorf("Kiln: %q %v, want the output and an error", out, err)
	}
	dir := t.TempDir()
	// The fake kiln prints its arguments: GenCluster's are the command.
	got := GenCluster(t, dir, Cluster{Name: "n", Endpoint: "127.0.0.2:16443"})
	if got != filepath.Join(dir, "cluster") {
		t.Errorf("GenCluster returned %s", got)
	}
}

func TestKubectl(t *testing.T) {
	fakeBin(t)
	k := Kubectl{Kubeconfig: "/kc", Server: "https://127.0.0.1:1", Flags: []string{"--request-timeout=5s"}}
	out, err := k.Run("get", "nodes")
	if err != nil {
		t.Fatal(err)
	}
	if want := "--kubeconfig /kc --server https://127.0.0.1:1 --request-timeout=5s get nodes"; out != want {
		t.Errorf("kubectl ran with %q, want %q (stdout only, trimmed)", out, want)
	}
	_, err = Kubectl{Kubeconfig: "/kc"}.Run("get", "fail")
	if err == nil || !strings.Contains(err.Error(), "kubectl get fail") || !strings.Contains(err.Error(), "warning on stderr") {
		t.Errorf("error %v: want the command and its stderr", err)
	}
	// A prefix runs kubectl under another command.
	out, err = Kubectl{Kubeconfig: "/kc", Prefix: []string{"env", "A=1"}}.Run("version")
	if err != nil || out != "--kubeconfig /kc version" {
		t.Errorf("with a prefix: %q %v", out, err)
	}
}
