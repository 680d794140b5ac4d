//go:build integration

package host

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln/internal/testutil/e2e"
)

// TestBadInput: each mistake gives one clear error naming the problem, a
// non-zero exit, and no component left running.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	clusterDir := genCluster(t, dir)
	goodConfig := writeConfig(t, dir, "")

	corrupt := filepath.Join(dir, "corrupt")
	if out, err := exec.Command("cp", "-a", clusterDir, corrupt).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(corrupt, "pki", "ca.crt"), []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badConfig := filepath.Join(dir, "bad.yaml")
	os.WriteFile(badConfig, []byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: master\naddres: 127.0.0.2\n"), 0o644)

	// Something already listens on the apiserver's port.
	ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", address, apiPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"missing cluster dir", []string{"--cluster", filepath.Join(dir, "nope"), "--config", goodConfig}, 1,
			[]string{"nope", "does not exist", "kiln gen cluster"}},
		{"corrupt cluster dir", []string{"--cluster", corrupt, "--config", goodConfig}, 1,
			[]string{"ca.crt"}},
		{"port in use", []string{"--cluster", clusterDir, "--config", goodConfig}, 1,
			[]string{"kube-apiserver", fmt.Sprintf("%s:%d", address, apiPort), "not free"}},
		{"malformed flag", []string{"--cluster", clusterDir, "--api-port", "lots"}, 2,
			[]string{"--api-port", "lots"}},
		{"unknown flag", []string{"--cluster", clusterDir, "--rol", "master"}, 2,
			[]string{"unknown flag", "--rol"}},
		{"malformed config", []string{"--cluster", clusterDir, "--config", badConfig}, 1,
			[]string{badConfig, "line 4", `"addres"`}},
		{"bad role", []string{"--cluster", clusterDir, "--config", goodConfig, "--role", "boss"}, 1,
			[]string{"role", "boss"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(dir, "data-"+strings.ReplaceAll(tc.name, " ", "-"))
			args := append([]string{"up", "--data-dir", dataDir}, tc.args...)
			cmd := exec.Command(e2e.Bin(e2e.KilnNodeBin), args...)
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(time.Minute):
				cmd.Process.Kill()
				t.Fatal("kiln-node up did not exit on bad input")
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tc.code {
				t.Fatalf("exit %v, want code %d\n%s", err, tc.code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output does not mention %q:\n%s", w, out)
				}
			}
			errLines := 0
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "kiln-node: ") {
					errLines++
				}
			}
			if errLines != 1 {
				t.Errorf("want one error line, got %d:\n%s", errLines, out)
			}
			if left := processesUsing(dataDir); len(left) > 0 {
				t.Fatalf("processes left behind:\n%s", strings.Join(left, "\n"))
			}
		})
	}
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
