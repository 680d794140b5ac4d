package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
	"k8s.io/component-base/version"

	"kiln/components/entry"
)

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the versions of the compiled-in components",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			out := c.OutOrStdout()
			fmt.Fprintf(out, "kubernetes: %s\n", version.Get().GitVersion)
			fmt.Fprintf(out, "etcd:       %s\n", entry.EtcdVersion)
			fmt.Fprintf(out, "go:         %s\n", runtime.Version())
			fmt.Fprintf(out, "components: %v\n", entry.Names())
			return nil
		},
	}
}
