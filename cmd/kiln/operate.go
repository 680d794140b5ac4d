package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/nodeapi"
	"kiln/internal/bounded"
	"kiln/internal/nodeclient"
	"kiln/qemu/vmcluster"
)

// nodeFlags are the flags of every command that talks to one node: which
// node, which cluster.
type nodeFlags struct{ node, clusterDir, stateDir string }

func (f *nodeFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.node, "node", "", "the node: its name (as kubectl get nodes shows it), or its node API's address HOST[:PORT] (default port 10260)")
	c.Flags().StringVar(&f.clusterDir, "cluster", defaultClusterDir, "cluster directory (its admin.kubeconfig authenticates kiln to the node, and its CA the node to kiln)")
	c.Flags().StringVar(&f.stateDir, "state", "out/cluster-vms", "kiln cluster's state directory: a node of a running kiln cluster is reached through its forwards")
}

// nodeHelp is what every node command's --help says of --node.
const nodeHelp = `
--node is the node's name or its node API's address. A name is looked
up in the running kiln cluster of --state (make cluster: a master's node
API is forwarded to the host, a worker is reached through a master), else
in the cluster's API (its InternalIP, which this machine must reach). The
node API (port 10260) serves only clients with the cluster's admin
certificate (the cluster directory's admin.kubeconfig), and kiln checks
that the node's certificate is the cluster CA's, issued for that node.`

// target resolves --node.
func (f *nodeFlags) target() (nodeclient.Target, error) {
	if f.node == "" {
		return nodeclient.Target{}, usageError{errors.New("--node is required (the node's name or address)")}
	}
	if isAddress(f.node) {
		hp, err := nodeHostPort(f.node)
		if err != nil {
			return nodeclient.Target{}, usageError{err}
		}
		return directTarget(hp), nil
	}
	if len(f.node) > 253 || !dnsName.MatchString(f.node) {
		_, err := nodeHostPort(f.node)
		return nodeclient.Target{}, usageError{err}
	}
	name := strings.ToLower(strings.TrimSuffix(f.node, "."))
	if t, ok, err := vmClusterTarget(f.stateDir, name); ok || err != nil {
		return t, err
	}
	return apiTarget(f.clusterDir, name)
}

// isAddress tells an address (an IP, or anything with a port) from a
// node's name.
func isAddress(s string) bool {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return true
	}
	h := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if i := strings.IndexByte(h, '%'); i >= 0 {
		h = h[:i]
	}
	return net.ParseIP(h) != nil || strings.ContainsAny(s, ":[]%/ ")
}

// vmClusterTarget finds a node of the kiln cluster running with state
// directory stateDir (ok false: none runs there, or it has no such
// node): a master through its node API's forward, a worker (which has
// none) through a master's relay.
func vmClusterTarget(stateDir, name string) (t nodeclient.Target, ok bool, err error) {
	st, err := vmcluster.ReadState(stateDir)
	if err != nil || !alive(st.PID) {
		return t, false, nil
	}
	var self *vmcluster.StateNode
	var names []string
	for i, n := range st.Nodes {
		names = append(names, n.Name)
		if n.Name == name {
			self = &st.Nodes[i]
		}
	}
	if self == nil {
		return t, false, nil
	}
	if !alive(self.PID) {
		return t, true, fmt.Errorf("node %s: its VM is not running (kiln cluster status)", name)
	}
	if self.NodeAPIPort != 0 {
		return nodeclient.Target{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(self.NodeAPIPort)), Name: name}, true, nil
	}
	for _, m := range st.Nodes {
		if m.NodeAPIPort != 0 && alive(m.PID) {
			via := nodeclient.Target{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(m.NodeAPIPort)), Name: m.Name}
			return nodeclient.Target{Addr: net.JoinHostPort(self.Address, strconv.Itoa(nodeapi.Port)), Name: name, Via: &via}, true, nil
		}
	}
	return t, true, fmt.Errorf("node %s: no master of the kiln cluster is running to reach it through (kiln cluster status)", name)
}

// apiTarget finds a node by name in the cluster's API: its node API at
// its InternalIP.
func apiTarget(clusterDir, name string) (nodeclient.Target, error) {
	api, err := apiFor(clusterDir, "")
	if err != nil {
		return nodeclient.Target{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	code, body, err := api.do(ctx, http.MethodGet, "/api/v1/nodes", "", nil)
	if err != nil {
		return nodeclient.Target{}, fmt.Errorf("finding node %s: %v (give the node's address instead: --node IP)", name, err)
	}
	if code != http.StatusOK {
		return nodeclient.Target{}, fmt.Errorf("finding node %s: %w", name, apiError(http.MethodGet, "/api/v1/nodes", code, body))
	}
	nodes, err := vmcluster.ParseNodeList(bytes.NewReader(body))
	if err != nil {
		return nodeclient.Target{}, err
	}
	return pickNode(nodes, name)
}

// pickNode is the node named name among nodes.
func pickNode(nodes []vmcluster.NodeStatus, name string) (nodeclient.Target, error) {
	var names []string
	for _, n := range nodes {
		if n.Name != name {
			names = append(names, n.Name)
			continue
		}
		if n.InternalIP == "" {
			return nodeclient.Target{}, fmt.Errorf("node %s has no InternalIP address in the API (give its address: --node IP)", name)
		}
		return nodeclient.Target{Addr: net.JoinHostPort(n.InternalIP, strconv.Itoa(nodeapi.Port)), Name: name}, nil
	}
	if len(names) == 0 {
		return nodeclient.Target{}, fmt.Errorf("no node %s: the cluster has no nodes yet", name)
	}
	return nodeclient.Target{}, fmt.Errorf("no node %s; the cluster's nodes: %s (or give an address: --node HOST[:PORT])", name, strings.Join(names, ", "))
}

func logsCommand() *cobra.Command {
	var f nodeFlags
	var follow bool
	var tail int
	c := &cobra.Command{
		Use:   "logs --node NODE COMPONENT [-f] [--tail N]",
		Short: "Print a component's recent output on a node (the supervisor's last 500 lines), and follow it",
		Long: `Print what a component of a node wrote lately: the supervisor keeps each
component's last 500 lines in memory (the whole output is in the node's
DATA/log/NAME.log). kiln status --node lists the components; on a master,
"audit" is the end of the API server's audit log.
` + nodeHelp,
		Example: `  kiln logs --node kiln-master etcd
  kiln logs --node kiln-worker-1 kubelet -f --tail 20
  kiln logs --node 192.168.1.21 containerd`,
		Args: exactArgs(1, "COMPONENT"),
		RunE: func(c *cobra.Command, args []string) error {
			t, err := f.target()
			if err != nil {
				return err
			}
			q := []string{}
			if c.Flags().Changed("tail") {
				if tail < 0 {
					return usageError{fmt.Errorf("--tail %d: want 0 or more lines", tail)}
				}
				q = append(q, nodeapi.LogsTail+"="+strconv.Itoa(tail))
			}
			ctx := context.Background()
			if follow {
				q = append(q, nodeapi.LogsFollow+"=1")
				var stop context.CancelFunc
				ctx, stop = signalContext()
				defer stop()
			} else {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
			}
			path := nodeapi.PathLogs + args[0]
			if len(q) > 0 {
				path += "?" + strings.Join(q, "&")
			}
			resp, err := nodeSendTo(ctx, t, f.clusterDir, http.MethodGet, path, nil, nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				_, err := nodeclient.ReadAnswer(t, resp, 64<<10)
				return err
			}
			_, err = io.Copy(c.OutOrStdout(), resp.Body)
			if err != nil && ctx.Err() != nil {
				return nil // Ctrl-C while following
			}
			return err
		},
	}
	f.register(c)
	c.Flags().BoolVarP(&follow, "follow", "f", false, "then print the new lines as they come, until Ctrl-C")
	c.Flags().IntVar(&tail, "tail", 0, "print only the last N lines (default: all the node keeps)")
	return c
}

func dmesgCommand() *cobra.Command {
	var f nodeFlags
	c := &cobra.Command{
		Use:   "dmesg --node NODE",
		Short: "Print a node's kernel messages",
		Long: `Print the kernel's message buffer of a node, one message a line with its
time since boot: what dmesg prints on the node.
` + nodeHelp,
		Example: `  kiln dmesg --node kiln-worker-1 | tail
  kiln dmesg --node 192.168.1.21`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			t, err := f.target()
			if err != nil {
				return err
			}
			body, err := nodeGetFrom(t, f.clusterDir, nodeapi.PathDmesg)
			if err != nil {
				return err
			}
			_, err = c.OutOrStdout().Write(body)
			return err
		},
	}
	f.register(c)
	return c
}

// powerCommand is kiln reboot or kiln shutdown.
func powerCommand(reboot bool) *cobra.Command {
	var f nodeFlags
	use, path, short, long := "shutdown", nodeapi.PathShutdown, "Power a node off, cleanly",
		`Power a node off the clean way, as its ACPI power button does: its
components stop in reverse order, its disks are unmounted, then the
machine powers off. kiln answers once the node has accepted.`
	if reboot {
		use, path, short, long = "reboot", nodeapi.PathReboot, "Reboot a node, cleanly",
			`Reboot a node the clean way: its components stop in reverse order, its
disks are unmounted, then the machine restarts. kiln answers once the
node has accepted; kiln status --node shows it back.`
	}
	c := &cobra.Command{
		Use:     use + " --node NODE",
		Short:   short,
		Long:    long + "\n" + nodeHelp,
		Example: fmt.Sprintf("  kiln %s --node kiln-worker-1\n  kiln %s --node 192.168.1.21 --cluster out/cluster", use, use),
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			t, err := f.target()
			if err != nil {
				return err
			}
			return postAndPrint(c, t, f.clusterDir, path, nil)
		},
	}
	f.register(c)
	return c
}

func resetCommand() *cobra.Command {
	var f nodeFlags
	var yes bool
	c := &cobra.Command{
		Use:   "reset --node NODE [--yes]",
		Short: "Wipe a node's state disk and reboot it, to repurpose the machine",
		Long: `Wipe a node's state disk: the node marks it and reboots, and its next
boot formats it before anything uses it. Everything the node kept is
gone: its pods' volumes, etcd's data on a master, its certificates and
logs. The node then boots as new (a worker joins again with the token of
its image). Refused on a diskless node (a reboot forgets its state).

kiln asks for the node's name to confirm; without a terminal it needs
--yes. Remove the node from the cluster first (kubectl delete node; on a
master, kiln etcd remove) if it is not to come back as itself.
` + nodeHelp,
		Example: `  kiln reset --node kiln-worker-1
  kiln reset --node kiln-worker-1 --yes`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			t, err := f.target()
			if err != nil {
				return err
			}
			name, err := confirmReset(c.InOrStdin(), c.ErrOrStderr(), stdinIsTerminal(c.InOrStdin()), yes, f.node, t.Name)
			if err != nil {
				return err
			}
			return postAndPrint(c, t, f.clusterDir, nodeapi.PathReset, strings.NewReader(name))
		},
	}
	f.register(c)
	c.Flags().BoolVar(&yes, "yes", false, "do not ask: the node's name given to --node is the confirmation")
	return c
}

// confirmReset returns the confirmation to send, the node's name: the
// one given (name, when --node named it) with --yes, or what the person
// at the terminal types. Without a terminal and --yes it refuses.
func confirmReset(in io.Reader, out io.Writer, terminal, yes bool, given, name string) (string, error) {
	if yes {
		if name == "" || isAddress(given) {
			return "", usageError{fmt.Errorf("--yes needs --node to be the node's name, which is the confirmation (%s is an address)", bounded.Quote(given))}
		}
		return name, nil
	}
	if !terminal {
		return "", usageError{errors.New("reset wipes the node's state disk: give --yes to confirm (stdin is not a terminal to ask on)")}
	}
	which := "the node's name"
	if name != "" && !isAddress(given) {
		which = name
	}
	fmt.Fprintf(out, "This wipes the state disk of node %s (%s) and reboots it: its pods' data, etcd's, its certificates and logs are lost.\nType %s to confirm: ", given, which, which)
	line, err := bufio.NewReader(in).ReadString('\n')
	typed := strings.TrimSpace(line)
	if err != nil && typed == "" {
		return "", errors.New("not confirmed: nothing typed")
	}
	if name != "" && !isAddress(given) && typed != name {
		return "", fmt.Errorf("not confirmed: %s is not %s", bounded.Quote(typed), name)
	}
	if typed == "" {
		return "", errors.New("not confirmed: nothing typed")
	}
	return typed, nil
}

// stdinIsTerminal reports whether in is a terminal (a character device).
func stdinIsTerminal(in io.Reader) bool {
	f, ok := in.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// postAndPrint POSTs to t's node API and prints its answer, or returns
// it as the error when it is not 2xx.
func postAndPrint(c *cobra.Command, t nodeclient.Target, clusterDir, path string, body io.Reader) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := nodeSendTo(ctx, t, clusterDir, http.MethodPost, path, body, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := nodeclient.ReadAnswer(t, resp, 64<<10)
	if err != nil {
		return err
	}
	fmt.Fprintln(c.OutOrStdout(), strings.TrimSpace(string(answer)))
	return nil
}

// exactArgs wants n arguments, named what, as a usage error.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s wants %s, got %q\nsee '%s --help'", c.CommandPath(), what, args, c.CommandPath())}
		}
		return nil
	}
}

// signalContext ends at Ctrl-C or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
