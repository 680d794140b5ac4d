package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// kubernetesVersion is the upstream Kubernetes release kiln-node links: the
// Makefile stamps go.mod's k8s.io/kubernetes version with
// -ldflags "-X main.kubernetesVersion=...". kiln itself links no Kubernetes
// code, so it cannot ask its build info.
var kubernetesVersion = "unknown (built without make)"

// version is kiln's own version, set at link time with
// -ldflags "-X main.version=..."; empty means the module's build info.
var version = ""

func kilnVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print kiln's version and the Kubernetes version it targets",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			out := c.OutOrStdout()
			fmt.Fprintf(out, "kiln:       %s\n", kilnVersion())
			fmt.Fprintf(out, "kubernetes: %s\n", kubernetesVersion)
			fmt.Fprintf(out, "go:         %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
