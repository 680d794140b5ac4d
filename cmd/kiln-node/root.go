package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// usageError marks errors in how the command was called (exit 2).
type usageError struct{ error }

func run(args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:   "kiln-node",
		Short: "kiln's node binary: PID 1 and every Kubernetes component in one program",
		Long: `kiln-node is the program inside a kiln image. As PID 1 it boots the machine
and runs the node's Kubernetes components under its supervisor. On a
development host, "kiln-node up" runs the same components as plain processes.

Every component (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet, kube-proxy) is upstream code compiled in; each runs
as its own child process ("kiln-node component NAME ...").`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w\nsee '%s --help'", err, c.CommandPath())}
	})
	root.AddCommand(upCommand(), statusCommand(), logsCommand(), versionCommand())
	root.AddCommand(&cobra.Command{
		Use:   "component NAME [ARGS...]",
		Short: "Run one component's upstream code (used by the supervisor)",
		RunE: func(*cobra.Command, []string) error {
			return errors.New("unreachable: handled before command parsing")
		},
	})
	if err := root.Execute(); err != nil {
		fmt.Fprintf(stderr, "kiln-node: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}
