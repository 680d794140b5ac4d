package main

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestMakefileStampsKubernetesVersion: kiln reports the Kubernetes version
// kiln-node links, go.mod's k8s.io/kubernetes. kiln cannot read it (it
// links no Kubernetes code), so the Makefile stamps it; this checks the
// command line `make bin/kiln` would run.
func TestMakefileStampsKubernetesVersion(t *testing.T) {
	data, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Skipf("go.mod: %v", err)
	}
	m := regexp.MustCompile(`(?m)^\s*k8s\.io/kubernetes (v\S+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("go.mod does not require k8s.io/kubernetes")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not found")
	}
	out, err := exec.Command("make", "-C", "../..", "--no-print-directory", "-n", "bin/kiln").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n bin/kiln: %v\n%s", err, out)
	}
	stamp := regexp.MustCompile(`-X main\.kubernetesVersion=([^\s']+)`)
	var build string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, " build ") && strings.HasSuffix(l, " ./cmd/kiln") {
			build = l
		}
	}
	if got := stamp.FindStringSubmatch(build); got == nil || got[1] != string(m[1]) {
		t.Errorf("make bin/kiln does not stamp main.kubernetesVersion=%s (go.mod's k8s.io/kubernetes); its build line:\n%s", m[1], build)
	}
}
