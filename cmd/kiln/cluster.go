package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/cluster"
	"kiln/qemu/vmcluster"
)

// clusterFlags are kiln cluster up's (and the daemon's) flags.
type clusterFlags struct {
	masters, workers, masterMemory, workerMemory, cpus, apiPort int
	clusterDir, state, masterImage, workerImage, vip            string
	timeout                                                     time.Duration
	egress, disks                                               bool
}

const (
	daemonLog  = "daemon.log"
	readyMark  = "kiln cluster: ready"
	failedMark = "kiln cluster: failed"
)

func clusterCommand() *cobra.Command {
	c := groupCommand(&cobra.Command{
		Use:   "cluster",
		Short: "Run a whole cluster in QEMU on this machine: a master and workers on a private network",
	})
	c.AddCommand(clusterUpCommand(), clusterDaemonCommand(), clusterDownCommand(), clusterStatusCommand())
	return c
}

func (f *clusterFlags) register(c *cobra.Command) {
	fl := c.Flags()
	fl.IntVar(&f.masters, "masters", 1, "number of masters (3 for a control plane that survives losing one)")
	fl.IntVar(&f.workers, "workers", 1, "number of workers")
	fl.StringVar(&f.clusterDir, "cluster", defaultClusterDir, "cluster directory the images were built from")
	fl.StringVar(&f.state, "state", "out/cluster-vms", "where the VMs' consoles, config drives and the daemon's log go")
	fl.StringVar(&f.masterImage, "master-image", "out/master", "master image (kiln build --format kernel)")
	fl.StringVar(&f.workerImage, "worker-image", "out/worker", "worker image (kiln build --format kernel)")
	fl.IntVar(&f.masterMemory, "master-memory", vmcluster.DefaultMasterMemory, "master RAM in MiB")
	fl.IntVar(&f.workerMemory, "worker-memory", vmcluster.DefaultWorkerMemory, "worker RAM in MiB")
	fl.IntVar(&f.cpus, "cpus", 2, "virtual CPUs per VM")
	fl.IntVar(&f.apiPort, "api-port", 0, "host port on 127.0.0.1 forwarded to the API server (default: the cluster endpoint's port when it is on loopback, else any free port)")
	fl.DurationVar(&f.timeout, "timeout", 25*time.Minute, "how long to wait for every node to be Ready (no KVM: boots are ~12x slower)")
	fl.StringVar(&f.vip, "vip", "auto", "the API's virtual IP with several masters: auto ("+vmcluster.DefaultVIP+"), none, or an address of 10.120.0.1 to 10.120.0.9")
	fl.BoolVar(&f.egress, "egress", false, egressHelp)
	fl.BoolVar(&f.disks, "disks", false, "boot every node from a disk of its own (an overlay of its image's qcow2, kiln build --format qcow2), as servers do: state on the disk, and kiln upgrade works")
}

// egressHelp is --egress's line in kiln cluster up and kiln run.
const egressHelp = "NAT the VMs to this machine's networks (no restrict=on) so containerd can pull from registries: they reach what this machine reaches, your LAN and its 127.0.0.1 (as 10.0.2.2) included. Default: closed"

// clusterVIP is --vip as vmcluster takes it: auto is DefaultVIP with
// several masters and none with one; none is "".
func clusterVIP(flag string, masters int) string {
	switch flag {
	case "auto":
		if masters > 1 {
			return vmcluster.DefaultVIP
		}
		return ""
	case "none":
		return ""
	}
	return flag
}

func (f *clusterFlags) args() []string {
	return []string{"--masters", strconv.Itoa(f.masters), "--workers", strconv.Itoa(f.workers), "--cluster", f.clusterDir, "--state", f.state,
		"--master-image", f.masterImage, "--worker-image", f.workerImage,
		"--master-memory", strconv.Itoa(f.masterMemory), "--worker-memory", strconv.Itoa(f.workerMemory),
		"--cpus", strconv.Itoa(f.cpus), "--api-port", strconv.Itoa(f.apiPort), "--timeout", f.timeout.String(), "--vip", f.vip,
		"--egress=" + strconv.FormatBool(f.egress), "--disks=" + strconv.FormatBool(f.disks)}
}

func clusterUpCommand() *cobra.Command {
	var f clusterFlags
	c := &cobra.Command{
		Use:   "up",
		Short: "Boot masters and workers in QEMU and wait until every node is Ready",
		Long: `Boot --masters master images and --workers worker images in QEMU, each VM
on a private L2 network with the others (10.120.0.0/24: master M is .9+M,
named kiln-master, kiln-master-2, …; worker N follows the masters, .10+N with
one master), the API server forwarded to 127.0.0.1 on the host. With several
masters the first starts etcd and the others join it; the host's API port
is then an endpoint that passes each connection to a master that answers,
and workers reach the masters through their node-local load balancer.
With several masters they also share a virtual IP for the API (--vip,
10.120.0.5 by default), held by one master at a time and moved when it
dies: the workers' load balancers have it as a seed, and the host's
endpoint, which cannot reach the VMs' network, sends each connection to
the master that holds it (as each master's node API says). Each
master's node API (kiln status --node, kiln etcd) is forwarded to a port of
its own: "kiln cluster status" lists them. The VMs keep running after this
command returns, under a background process whose log is STATE/daemon.log;
"kiln cluster down" stops them.

Each VM gets its node config (role, name, static address) on a small config
drive; the images are the ones "make image" builds (FORMAT=kernel is enough).

By default the VMs have no way out: QEMU's user networking is restricted
(restrict=on), so they reach nothing but each other and the forwarded
ports, and only images baked into the node image run. --egress opens it:
every VM gets QEMU's NAT (the masters on their user network eth1, each
worker on one of its own), with 10.0.2.2 as its default route and 10.0.2.3
(QEMU's DNS forwarder) as its name server, so containerd can pull images
from registries. The VMs then reach anything this machine reaches: the
internet, your LAN, and at 10.0.2.2 the services listening on this
machine's 127.0.0.1. The nodes' own connections go out (image pulls,
hostNetwork pods), and pods' too: each node masquerades them to its own
address when they leave the pod network. The node image has no CA
certificates: a public registry's CA goes in the node config's registries
section (see the README, Egress). "kiln cluster status" says whether
egress is on.`,
		Example: `  kiln cluster up --workers 2
  kiln cluster up --masters 3 --workers 1
  kiln cluster up --egress            # the VMs may reach the internet (and your LAN)
  kubectl --kubeconfig out/cluster/admin.kubeconfig get nodes -o wide
  kiln cluster down`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error { return clusterUp(c.OutOrStdout(), &f) },
	}
	f.register(c)
	return c
}

func clusterDaemonCommand() *cobra.Command {
	var f clusterFlags
	c := &cobra.Command{
		Use:    "daemon",
		Short:  "Run the VMs of kiln cluster up in the foreground (kiln cluster up starts it)",
		Hidden: true,
		Args:   noArgs,
		RunE:   func(c *cobra.Command, _ []string) error { return clusterDaemon(c.OutOrStdout(), &f) },
	}
	f.register(c)
	return c
}

func clusterDownCommand() *cobra.Command {
	return stateCommand("down", "Power the cluster's VMs off (workers first) and stop them", clusterDown)
}

func clusterStatusCommand() *cobra.Command {
	return stateCommand("status", "Show the cluster's VMs and its nodes", clusterStatus)
}

// stateCommand is a cluster sub-command that acts on a running cluster,
// found by its state directory.
func stateCommand(use, short string, run func(io.Writer, string) error) *cobra.Command {
	var state string
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  noArgs,
		RunE:  func(c *cobra.Command, _ []string) error { return run(c.OutOrStdout(), state) },
	}
	c.Flags().StringVar(&state, "state", "out/cluster-vms", "the cluster's state directory")
	return c
}

func readState(dir string) (*vmcluster.State, error) { return vmcluster.ReadState(dir) }

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// defaultAPIPort is the cluster endpoint's port when the endpoint is on
// loopback (its admin.kubeconfig then works as it is), else 0 (any).
func defaultAPIPort(clusterDir string) int {
	cl, err := cluster.Load(clusterDir)
	if err != nil {
		return 0
	}
	rest := strings.TrimPrefix(cl.Endpoint, "https://")
	host, port, _ := strings.Cut(rest, ":")
	if host != "127.0.0.1" && host != "localhost" {
		return 0
	}
	p, _ := strconv.Atoi(port)
	return p
}

func clusterUp(out io.Writer, f *clusterFlags) error {
	if st, err := readState(f.state); err == nil && alive(st.PID) {
		return fmt.Errorf("a cluster from %s is already running (pid %d): kiln cluster down first", f.state, st.PID)
	}
	if _, err := os.Stat(f.clusterDir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cluster directory %s does not exist: build the images first (make image ROLE=master; make image ROLE=worker)", f.clusterDir)
	}
	if f.apiPort == 0 {
		f.apiPort = defaultAPIPort(f.clusterDir)
	}
	if err := os.MkdirAll(f.state, 0o755); err != nil {
		return err
	}
	os.Remove(filepath.Join(f.state, vmcluster.StateFile))
	logPath := filepath.Join(f.state, daemonLog)
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{"cluster", "daemon"}, f.args()...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives this command and its terminal
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	logf.Close()
	fmt.Fprintf(out, "kiln cluster: VMs run under pid %d (log %s)\n", cmd.Process.Pid, logPath)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	// Follow the daemon's log until it says ready or failed, or exits.
	in, err := os.Open(logPath)
	if err != nil {
		return err
	}
	defer in.Close()
	r := bufio.NewReader(in)
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			fmt.Fprint(out, line)
			if strings.HasPrefix(line, readyMark) {
				// The rest (how to use it) follows in the log.
				time.Sleep(200 * time.Millisecond)
				rest, _ := io.ReadAll(r)
				out.Write(rest)
				return nil
			}
			if strings.HasPrefix(line, failedMark) {
				return errors.New("the cluster did not come up: its VMs are powering off (kiln cluster status shows when they are gone)")
			}
			continue
		}
		if err != nil && err != io.EOF {
			return err
		}
		select {
		case err := <-done:
			rest, _ := io.ReadAll(r)
			out.Write(rest)
			return fmt.Errorf("the cluster daemon exited (%v); see %s", err, logPath)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func clusterDaemon(out io.Writer, f *clusterFlags) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The VMs live until Close powers them off; a signal only asks for it
	// (QEMU started with ctx would be killed the moment ctx ends).
	c, err := vmcluster.Up(context.Background(), vmcluster.Options{
		MasterImage: f.masterImage, WorkerImage: f.workerImage, ClusterDir: f.clusterDir, StateDir: f.state,
		Masters: f.masters, Workers: f.workers, MasterMemory: f.masterMemory, WorkerMemory: f.workerMemory, CPUs: f.cpus,
		APIPort: f.apiPort, VIP: clusterVIP(f.vip, f.masters), Egress: f.egress, Disks: f.disks, Progress: out,
	})
	if err != nil {
		fmt.Fprintf(out, "%s: %v\n", failedMark, err)
		return err
	}
	statePath, err := c.WriteState(f.state)
	if err != nil {
		c.Close()
		return err
	}
	defer os.Remove(statePath)

	wctx, cancel := context.WithTimeout(ctx, f.timeout)
	err = c.WaitReady(wctx)
	cancel()
	if err != nil {
		fmt.Fprintf(out, "%s: %v\n", failedMark, err)
		c.Close()
		return err
	}
	kubeconfig := c.Kubeconfig
	if own := filepath.Join(f.clusterDir, "admin.kubeconfig"); defaultAPIPort(f.clusterDir) == c.APIPort {
		kubeconfig, _ = filepath.Abs(own)
	}
	fmt.Fprintf(out, "%s: %d nodes Ready\n\n  export KUBECONFIG=%s\n  kubectl get nodes -o wide     (bin/kubectl if kubectl is not installed)\n\n  kiln cluster status           the VMs and nodes\n  kiln cluster down             power the VMs off\n", readyMark, len(c.Nodes), kubeconfig)
	<-ctx.Done()
	fmt.Fprintln(out, "kiln cluster: stopping")
	return c.Close()
}

func clusterDown(out io.Writer, state string) error {
	st, err := readState(state)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(out, "kiln cluster: no cluster running from %s\n", state)
		return nil
	}
	if err != nil {
		return err
	}
	if !alive(st.PID) {
		os.Remove(filepath.Join(state, vmcluster.StateFile))
		fmt.Fprintf(out, "kiln cluster: the daemon (pid %d) is gone; cleaned up\n", st.PID)
		return nil
	}
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		return err
	}
	fmt.Fprintf(out, "kiln cluster: powering off %d VMs (workers first)...\n", len(st.Nodes))
	for deadline := time.Now().Add(5 * time.Minute); alive(st.PID); time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			syscall.Kill(st.PID, syscall.SIGKILL)
			for _, n := range st.Nodes {
				syscall.Kill(n.PID, syscall.SIGKILL)
			}
			return errors.New("the VMs did not power off in 5 minutes: killed")
		}
	}
	fmt.Fprintln(out, "kiln cluster: stopped")
	return nil
}

func clusterStatus(out io.Writer, state string) error {
	st, err := readState(state)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(out, "kiln cluster: no cluster running from %s\n", state)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "daemon pid %d (alive: %t), API on 127.0.0.1:%d, kubeconfig %s\n", st.PID, alive(st.PID), st.APIPort, st.Kubeconfig)
	if st.VIP != "" {
		fmt.Fprintf(out, "virtual IP %s, %s (the host's API port goes to the holder)\n", st.VIP, vipHolders(st))
	}
	fmt.Fprintln(out, egressLine(st.Egress))
	fmt.Fprintln(out)
	fmt.Fprintf(out, "%-16s %-7s %-12s %-8s %-10s %-16s %s\n", "VM", "ROLE", "ADDRESS", "PID", "RSS", "NODE API", "CONSOLE")
	for _, n := range st.Nodes {
		rss := "-"
		if alive(n.PID) {
			rss = vmRSS(n.PID)
		}
		nodeAPI := "-"
		if n.NodeAPIPort != 0 {
			nodeAPI = fmt.Sprintf("127.0.0.1:%d", n.NodeAPIPort)
		}
		fmt.Fprintf(out, "%-16s %-7s %-12s %-8d %-10s %-16s %s\n", n.Name, n.Role, n.Address, n.PID, rss, nodeAPI, n.Console)
	}
	client, err := vmcluster.NewClient(st.Kubeconfig)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodes, err := client.Nodes(ctx)
	if err != nil {
		fmt.Fprintf(out, "\nnodes: the API does not answer: %v\n", err)
		return nil
	}
	fmt.Fprintf(out, "\n%-16s %-7s %s\n", "NODE", "READY", "VERSION")
	for _, n := range nodes {
		fmt.Fprintf(out, "%-16s %-7t %s\n", n.Name, n.Ready, n.Version)
	}
	return nil
}

// egressLine is kiln cluster status's line on the VMs' way out.
func egressLine(on bool) string {
	if on {
		return "egress on: the VMs reach this machine's networks through QEMU's NAT (kiln cluster up --egress)"
	}
	return "egress off: the VMs reach nothing outside (QEMU user networking restrict=on; kiln cluster up --egress opens it)"
}

// vipHolders says which masters hold the VIP, asking each one's node API.
func vipHolders(st *vmcluster.State) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var held []string
	for _, n := range st.Nodes {
		if n.NodeAPIPort == 0 || !alive(n.PID) {
			continue
		}
		if s, err := vmcluster.ReadNodeStatus(ctx, st.Kubeconfig, n.NodeAPIPort); err == nil && s.VIP != nil && s.VIP.Held {
			held = append(held, n.Name)
		}
	}
	if len(held) == 0 {
		return "held by no master that answers"
	}
	return "held by " + strings.Join(held, ", ")
}

// vmRSS is a process's resident memory, from /proc.
func vmRSS(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "-"
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "-"
}
