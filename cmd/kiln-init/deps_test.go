package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// allowed is everything stage 1 may link besides the standard library: it
// is unpacked into RAM the kernel never pages out, on every node, so it
// stays a few megabytes (a config parser, a Kubernetes client or anything
// of kiln-node's would multiply it).
var allowed = map[string]bool{
	"kiln/cmd/kiln-init":       true,
	"kiln/init/stage1":         true,
	"kiln/init/boot/console":   true,
	"kiln/init/boot/kmod":      true,
	"kiln/configs/image":       true,
	"golang.org/x/sys/unix":    true,
	"golang.org/x/sys/cpu":     true,
	"golang.org/x/sys/windows": true,
}

func TestStage1StaysSmall(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if !allowed[pkg] && !strings.HasPrefix(pkg, "internal/") && !strings.HasPrefix(pkg, "vendor/") {
			t.Errorf("kiln-init links %s: stage 1 must stay small (see allowed)", pkg)
		}
	}
}
