package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"kiln/configs/cluster"
)

// kiln runs the command line in-process.
func kiln(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestGenCluster(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	code, out, errOut := kiln(t, "gen", "cluster", "--name", "clitest", "--out", dir, "--endpoint", "127.0.0.2:7443")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	cl, err := cluster.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cl.Name != "clitest" || cl.Endpoint != "https://127.0.0.2:7443" {
		t.Errorf("cluster %s at %s", cl.Name, cl.Endpoint)
	}
	for _, want := range []string{
		"generated cluster clitest in " + dir + "\n",
		filepath.Join(dir, "cluster.yaml") + " ",
		filepath.Join(dir, "admin.kubeconfig") + " ",
		filepath.Join(dir, "pki/ca.{crt,key}") + " ",
		filepath.Join(dir, "pki/etcd/ca.{crt,key}") + " ",
		filepath.Join(dir, "pki/front-proxy-ca.{crt,key}") + " ",
		filepath.Join(dir, "pki/sa.{key,pub}") + " ",
		filepath.Join(dir, "secrets/encryption.key") + " ",
		filepath.Join(dir, "secrets/bootstrap-token") + " ",
		"https://127.0.0.2:7443",
		"\nCA hash: " + cl.CAHash + "\n",
		"kubectl --kubeconfig " + filepath.Join(dir, "admin.kubeconfig") + " get nodes\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The bootstrap token's secret is not printed.
	if secret := cl.BootstrapToken[7:]; strings.Contains(out, secret) {
		t.Error("output shows the bootstrap token secret")
	}
}

func TestGenClusterDefaults(t *testing.T) {
	t.Chdir(t.TempDir())
	if code, _, errOut := kiln(t, "gen", "cluster"); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	cl, err := cluster.Load("out/cluster")
	if err != nil {
		t.Fatal(err)
	}
	if cl.Name != "kiln" || cl.Endpoint != "https://127.0.0.1:6443" || cl.ServiceCIDR != "10.96.0.0/12" || cl.PodCIDR != "10.244.0.0/16" {
		t.Errorf("defaults: %s %s %s %s", cl.Name, cl.Endpoint, cl.ServiceCIDR, cl.PodCIDR)
	}
}

func TestGenClusterRefusesOverwrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	if code, _, errOut := kiln(t, "gen", "cluster", "--name", "one", "--out", dir); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	before, _ := os.ReadFile(filepath.Join(dir, cluster.CACertFile))

	code, out, errOut := kiln(t, "gen", "cluster", "--name", "two", "--out", dir)
	want := "kiln: " + dir + " already holds cluster one; use --force to overwrite (this invalidates every node built from it)\n"
	if code != 1 || errOut != want || out != "" {
		t.Errorf("exit %d, stdout %q, stderr %q\nwant exit 1, stderr %q", code, out, errOut, want)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, cluster.CACertFile)); !bytes.Equal(before, after) {
		t.Error("the CA changed")
	}

	code, out, errOut = kiln(t, "gen", "cluster", "--name", "two", "--out", dir, "--force")
	if code != 0 || !strings.Contains(out, "generated cluster two") || !strings.Contains(errOut, "replaced the cluster") {
		t.Errorf("--force: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if cl, err := cluster.Load(dir); err != nil || cl.Name != "two" {
		t.Errorf("after --force: %v", err)
	}
}

func TestErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"bad endpoint", []string{"gen", "cluster", "--out", dir, "--endpoint", "http://10.0.0.1:6443"}, 1,
			[]string{`endpoint "http://10.0.0.1:6443"`, "HOST:PORT or https://HOST:PORT"}},
		{"endpoint without port", []string{"gen", "cluster", "--out", dir, "--endpoint", "10.0.0.1"}, 1,
			[]string{`endpoint "10.0.0.1"`, "no port"}},
		{"bad name", []string{"gen", "cluster", "--out", dir, "--name", "My_Cluster"}, 1,
			[]string{`cluster name "My_Cluster"`, "DNS label"}},
		{"bad CIDR", []string{"gen", "cluster", "--out", dir, "--service-cidr", "10.96.0.0"}, 1,
			[]string{`serviceCIDR "10.96.0.0"`}},
		{"unknown flag", []string{"gen", "cluster", "--out", dir, "--bogus"}, 2,
			[]string{"unknown flag: --bogus", "see 'kiln gen cluster --help'"}},
		{"flag without value", []string{"gen", "cluster", "--out"}, 2,
			[]string{"flag needs an argument", "--out"}},
		{"bad bool", []string{"gen", "cluster", "--out", dir, "--force=maybe"}, 2,
			[]string{"--force", "maybe"}},
		{"argument", []string{"gen", "cluster", dir}, 2,
			[]string{"kiln gen cluster takes no arguments", "see 'kiln gen cluster --help'"}},
		{"unknown command", []string{"bake"}, 2,
			[]string{`unknown command "bake" for "kiln"`, "see 'kiln --help'"}},
		{"misspelt command", []string{"gen", "clustr"}, 2,
			[]string{`unknown command "clustr" for "kiln gen"`, `did you mean "cluster"?`}},
		{"gen alone", []string{"gen"}, 2,
			[]string{"kiln gen needs a sub-command: cluster"}},
		{"root unknown flag", []string{"--bogus"}, 2,
			[]string{"unknown flag: --bogus", "see 'kiln --help'"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := kiln(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, errOut)
			}
			if out != "" {
				t.Errorf("stdout %q", out)
			}
			if !strings.HasPrefix(errOut, "kiln: ") || strings.Count(errOut, "kiln: ") != 1 {
				t.Errorf("stderr %q: want one error prefixed kiln:", errOut)
			}
			if strings.Contains(errOut, "Usage:") {
				t.Errorf("stderr holds cobra's usage: %q", errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("%s written by a failed command", dir)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{nil, {"--help"}, {"help"}} {
		code, out, errOut := kiln(t, args...)
		if code != 0 || errOut != "" || !strings.Contains(out, "kiln builds bootable Kubernetes appliances") ||
			!strings.Contains(out, "kiln gen cluster") {
			t.Errorf("kiln %v: exit %d, stderr %q, stdout %q", args, code, errOut, out)
		}
	}
	code, out, _ := kiln(t, "gen", "cluster", "--help")
	if code != 0 || !strings.Contains(out, "--endpoint") || !strings.Contains(out, "--force") {
		t.Errorf("gen cluster --help: exit %d\n%s", code, out)
	}
	code, out, errOut := kiln(t, "version")
	if code != 0 || errOut != "" || !strings.Contains(out, "kubernetes: "+kubernetesVersion+"\n") || !strings.Contains(out, "kiln: ") {
		t.Errorf("version: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestNoKubernetesDependency: kiln must stay small and quick to build, so
// nothing it links may come from k8s.io (sigs.k8s.io/yaml is fine). The test
// binary links what kiln links plus the test's own imports, which are
// standard library and kiln packages.
func TestNoKubernetesDependency(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Skip("no build info")
	}
	t.Logf("%d modules linked", len(bi.Deps))
	for _, d := range bi.Deps {
		if strings.HasPrefix(d.Path, "k8s.io/") {
			t.Errorf("kiln links %s %s: the host CLI must not depend on k8s.io modules", d.Path, d.Version)
		}
	}
}
