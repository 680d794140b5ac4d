package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The two-binary wall: kiln-node links the Kubernetes components, etcd and
// containerd; the host CLI links none of them. A rule is a package path and
// everything under it; a path ending in "/" is the packages under it only.
var forbidden = []struct{ path, why string }{
	{"k8s.io/kubernetes", "the Kubernetes components"},
	{"k8s.io/apiserver", "Kubernetes server library"},
	{"k8s.io/apiextensions-apiserver", "Kubernetes server library"},
	{"k8s.io/kube-aggregator", "Kubernetes server library"},
	{"k8s.io/controller-manager", "Kubernetes server library"},
	{"k8s.io/cloud-provider", "Kubernetes server library"},
	{"k8s.io/kube-scheduler", "Kubernetes server library"},
	{"k8s.io/kubelet", "Kubernetes server library"},
	{"k8s.io/pod-security-admission", "Kubernetes server library"},
	{"go.etcd.io/etcd/server", "the etcd server"},
	{"go.etcd.io/raft", "the etcd server"},
	{"go.etcd.io/bbolt", "the etcd server"},
	{"github.com/containerd/containerd", "containerd and its API"},
	{"kiln/cmd/kiln-node", "the node binary"},
	{"kiln/components", "the components, their entry points (which run upstream code) and add-ons"},
	{"kiln/init", "PID 1 and the supervisor"},
}

func forbiddenRule(pkg string) (string, bool) {
	for _, r := range forbidden {
		if strings.HasSuffix(r.path, "/") {
			if strings.HasPrefix(pkg, r.path) {
				return r.why, true
			}
			continue
		}
		if pkg == r.path || strings.HasPrefix(pkg, r.path+"/") {
			return r.why, true
		}
	}
	return "", false
}

// TestDepsWall lists what the CLI links and fails on anything of the node
// binary's, naming the chain of imports that pulls it in.
func TestDepsWall(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the CLI's dependencies: %v", err)
	}
	gomod, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if root == "." || root == "" {
		t.Fatal("go env GOMOD names no go.mod")
	}

	const self = "kiln/cmd/kiln"
	cmd := exec.Command(goBin, "list", "-deps", "-f", `{{.ImportPath}}:{{join .Imports " "}}`, "./cmd/kiln")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps ./cmd/kiln: %v\n%s", err, stderr)
	}
	imports := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, deps, _ := strings.Cut(line, ":")
		imports[pkg] = strings.Fields(deps)
	}
	if _, ok := imports[self]; !ok {
		t.Fatalf("go list -deps ./cmd/kiln does not list %s:\n%s", self, out)
	}

	// Breadth first from the CLI: the first path found to a package is a
	// shortest one.
	from := map[string]string{self: ""}
	queue := []string{self}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, d := range imports[p] {
			if _, seen := from[d]; !seen {
				from[d] = p
				queue = append(queue, d)
			}
		}
	}
	chain := func(pkg string) string {
		var c []string
		for p := pkg; p != ""; p = from[p] {
			c = append([]string{p}, c...)
		}
		return strings.Join(c, " → ")
	}
	// Report where the wall is crossed: a forbidden package imported by an
	// allowed one. What it pulls in after that is only counted.
	var crossings []string
	n := 0
	for pkg := range imports {
		why, bad := forbiddenRule(pkg)
		if !bad {
			continue
		}
		n++
		if _, alsoBad := forbiddenRule(from[pkg]); !alsoBad {
			crossings = append(crossings, fmt.Sprintf("%s (%s), by\n\t%s", pkg, why, chain(pkg)))
		}
	}
	sort.Strings(crossings)
	for _, c := range crossings {
		t.Errorf("kiln links %s", c)
	}
	if n > 0 {
		t.Errorf("kiln links %d packages that only kiln-node may link", n)
	}
	t.Logf("kiln links %d packages", len(imports))
}
