// Package e2e holds what the test tiers that run kiln's built binaries
// share (tests/host, tests/vm, tests/bench): the -bin flag naming where
// they are, the kiln CLI, cluster directories made by `kiln gen cluster`,
// and kubectl.
//
// It registers the -bin flag, so only those test packages import it.
package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The binaries `make` builds into bin/.
const (
	KilnBin     = "kiln"
	KilnNodeBin = "kiln-node"
	KubectlBin  = "kubectl"
)

var binDir = flag.String("bin", "../../bin", "directory holding kiln, kiln-node and kubectl")

// Bin is the absolute path of a binary in the -bin directory.
func Bin(name string) string {
	p := filepath.Join(*binDir, name)
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// Kiln runs bin/kiln and returns what it printed, stdout and stderr
// together.
func Kiln(args ...string) (string, error) {
	out, err := exec.Command(Bin(KilnBin), args...).CombinedOutput()
	return string(out), err
}

// MustKiln is Kiln that fails the test, with the command and its output,
// when kiln fails.
func MustKiln(t testing.TB, args ...string) string {
	t.Helper()
	out, err := Kiln(args...)
	if err != nil {
		t.Fatalf("kiln %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Cluster is what `kiln gen cluster` is asked for; empty fields are its
// defaults.
type Cluster struct {
	Name     string // --name
	Endpoint string // --endpoint, host:port of the API
}

// GenCluster runs `kiln gen cluster` into dir/cluster and returns that
// directory.
func GenCluster(t testing.TB, dir string, c Cluster) string {
	t.Helper()
	out := filepath.Join(dir, "cluster")
	args := []string{"gen", "cluster", "--out", out}
	if c.Name != "" {
		args = append(args, "--name", c.Name)
	}
	if c.Endpoint != "" {
		args = append(args, "--endpoint", c.Endpoint)
	}
	MustKiln(t, args...)
	return out
}

// Kubectl runs bin/kubectl against one cluster.
type Kubectl struct {
	Kubeconfig string
	Server     string        // --server, when not the kubeconfig's
	Flags      []string      // more flags before each command's, e.g. --request-timeout=50s
	Timeout    time.Duration // for each command; a minute when zero
	// Prefix is a command kubectl runs under, e.g. a network namespace's
	// (netns.NS.Prefix).
	Prefix []string
}

// Run runs one kubectl command and returns its standard output without
// surrounding space. Its error names the command and holds what kubectl
// printed on standard error.
func (k Kubectl) Run(args ...string) (string, error) {
	timeout := k.Timeout
	if timeout == 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	argv := append([]string(nil), k.Prefix...)
	argv = append(argv, Bin(KubectlBin), "--kubeconfig", k.Kubeconfig)
	if k.Server != "" {
		argv = append(argv, "--server", k.Server)
	}
	argv = append(argv, k.Flags...)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := strings.TrimSpace(stdout.String())
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Must is Run that fails the test when kubectl fails.
func (k Kubectl) Must(t testing.TB, args ...string) string {
	t.Helper()
	out, err := k.Run(args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}
