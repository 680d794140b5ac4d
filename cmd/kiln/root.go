package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// usageError marks errors in how the command was called (exit 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// run runs the kiln command line and returns the exit code: 0, 1 for a
// failure, 2 for a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.Execute(); err != nil {
		fmt.Fprintf(stderr, "kiln: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// newRootCommand builds the command tree. A sub-command is a function in
// its own file returning a *cobra.Command, added here.
func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "kiln",
		Short: "kiln builds bootable Kubernetes appliances",
		Long: `kiln builds bootable Kubernetes appliances: machine images whose only
program is kiln-node, which boots the machine and runs the upstream
Kubernetes components (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet, kube-proxy) as supervised processes.

A cluster starts as a cluster directory, its identity: certificate
authorities, service-account key, encryption key, bootstrap token and an
admin kubeconfig. Every node built from it trusts its CAs.

Commands:
  kiln gen cluster   generate a cluster directory
  kiln build         build a master's or a worker's images (kernel, ISO, qcow2, PXE)
  kiln run           boot an image in QEMU
  kiln pxe serve     boot machines from the network: DHCP, TFTP and HTTP on one interface
  kiln version       print kiln's version and the Kubernetes version it targets

Run a master on this machine from a cluster directory with
"kiln-node up --cluster DIR".`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          unknownSubcommand,
		RunE: func(c *cobra.Command, _ []string) error {
			return c.Help()
		},
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w\nsee '%s --help'", err, c.CommandPath())}
	})
	root.AddCommand(genCommand(), buildCommand(), runCommand(), clusterCommand(), statusCommand(), logsCommand(), dmesgCommand(), powerCommand(true), powerCommand(false), resetCommand(), certsCommand(), upgradeCommand(), etcdCommand(), pxeCommand(), versionCommand())
	return root
}

// groupCommand makes cmd a command that only holds sub-commands: called
// alone it is a usage error naming them; with an unknown one, too.
func groupCommand(cmd *cobra.Command) *cobra.Command {
	cmd.Args = unknownSubcommand
	cmd.RunE = func(c *cobra.Command, _ []string) error {
		var names []string
		for _, s := range c.Commands() {
			if s.IsAvailableCommand() {
				names = append(names, s.Name())
			}
		}
		return usageError{fmt.Errorf("%s needs a sub-command: %s\nsee '%s --help'",
			c.CommandPath(), strings.Join(names, ", "), c.CommandPath())}
	}
	return cmd
}

// unknownSubcommand is the Args check of commands that hold sub-commands:
// cobra hands them the arguments it could not match to one.
func unknownSubcommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2
	}
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usageError{fmt.Errorf("%s\nsee '%s --help'", msg, c.CommandPath())}
}

// noArgs is cobra.NoArgs as a usage error.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q\nsee '%s --help'",
			c.CommandPath(), args, c.CommandPath())}
	}
	return nil
}
