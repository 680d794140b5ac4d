// Package up brings a node up: it loads the node config and the cluster
// directory, checks that the node can start (ports free, data dir not in
// use), writes each component's files, and runs the role's components under
// the supervisor until the context is cancelled. Host mode (`kiln-node up`)
// calls it directly; PID 1 calls it after mounting, networking and the state
// disk.
package up

import (
	"kiln/configs/nodeapi"

	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"kiln/components"
	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/init/supervisor"
	"kiln/internal/panics"
)

// Options are what `kiln-node up` is told.
type Options struct {
	Config     node.Config
	ClusterDir string
	DataDir    string
	// Self is the node binary; components run as `Self component NAME ...`.
	Self string
	// Console receives stage lines and, prefixed, every component's output.
	Console io.Writer
	// Quiet keeps component output off the console (it still goes to the
	// log files).
	Quiet bool
	// CgroupRoot, if set, puts each component in its own cgroup below it.
	CgroupRoot string
	// Started is the origin of the stage timestamps (process or kernel start).
	Started time.Time
	// Supervisor tunes restart behaviour; zero values take the supervisor's
	// defaults.
	Supervisor supervisor.Options
	// Power asks PID 1 to reboot or power off the machine (the node API's
	// reboot, shutdown and reset); nil when PID 1 does not run the node
	// (kiln-node up on a host), whose node API then refuses them.
	Power PowerFunc
	// Upgrade is PID 1's side of kiln upgrade (the image the node runs,
	// its slots); nil outside PID 1.
	Upgrade Upgrader
}

// SocketPath is where a running node serves its status, under the data dir.
func SocketPath(dataDir string) string { return filepath.Join(dataDir, "run", "kiln.sock") }

// LogDir is where each component's log file is written.
func LogDir(dataDir string) string { return filepath.Join(dataDir, "log") }

// Run brings the node up and blocks until ctx is cancelled and every
// component has stopped. An error before any component started means nothing
// was left running.
func Run(ctx context.Context, o Options) error {
	con := newConsole(o.Console, o.Started)
	cfg := o.Config
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	dataDir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return err
	}
	load := cluster.Load
	if cfg.Role == node.RoleWorker {
		load = cluster.LoadForWorker
	}
	cl, err := load(o.ClusterDir)
	if err != nil {
		return err
	}
	nodeName := cfg.Hostname
	if nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no hostname in the config and none from the system: %w", err)
		}
		nodeName = strings.ToLower(h)
	}
	if err := checkAddressRanges(cfg.Address, cl); err != nil {
		return err
	}
	if err := checkVIPRange(&cfg, cl); err != nil {
		return err
	}
	env := &components.Env{Config: cfg, Cluster: cl, NodeName: nodeName, DataDir: dataDir}
	// Read before anything starts: what is in use now is the system's.
	if m := supervisor.ReadMachineMemory(); m != nil {
		env.Memory = components.NodeMemory{Total: m.TotalBytes, Available: m.AvailableBytes}
	}
	comps := components.For(&cfg)
	if len(comps) == 0 {
		return fmt.Errorf("role %s: no components are built in for this role yet", cfg.Role)
	}
	con.stage("node %s, role %s, cluster %s, data dir %s", nodeName, cfg.Role, cl.Name, dataDir)

	if err := os.MkdirAll(filepath.Join(dataDir, "run"), 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDataDir(dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	if err := checkPorts(env, comps); err != nil {
		return err
	}

	specs := make([]supervisor.Spec, 0, len(comps))
	for _, c := range comps {
		if err := c.Prepare(env); err != nil {
			return fmt.Errorf("%s: preparing files: %w", c.Name(), err)
		}
		argv, overridden := components.Args(c, env)
		for _, o := range overridden {
			con.stage("%s: config overrides %s", c.Name(), o)
		}
		spec := supervisor.Spec{
			Name:      c.Name(),
			Path:      o.Self,
			Args:      append([]string{"component", c.Name()}, argv...),
			DependsOn: presentDeps(c.DependsOn(), comps),
		}
		mem := components.Memory(c, env)
		spec.Env = memoryEnv(mem, os.LookupEnv)
		spec.MemoryLow, spec.MemoryHigh = mem.Low, mem.High
		if _, ok := c.(components.ChildKeeper); ok {
			spec.KeepChildren = true
		}
		if _, ok := c.(components.Task); ok {
			spec.Oneshot = true
		} else if p, ok := c.(components.Prober); ok {
			spec.Ready = func(ctx context.Context) error { return p.Ready(ctx, env) }
		}
		specs = append(specs, spec)
	}
	if err := components.PrepareNodeAPI(env); err != nil {
		return fmt.Errorf("node API: preparing its certificate: %w", err)
	}
	con.stage("files written")
	if line := memoryLine(env.Memory, specs); line != "" {
		con.stage("%s", line)
	}

	sopts := o.Supervisor
	sopts.LogDir = LogDir(dataDir)
	sopts.CgroupRoot = o.CgroupRoot
	sopts.Annotate = annotations(vipAnnotation(&cfg, net.InterfaceAddrs), imageAnnotation(o.Upgrade))
	for _, c := range comps {
		if _, ok := c.(components.APIServer); ok {
			// kiln-node logs audit, and the node API's /logs/audit.
			sopts.LogFiles = map[string]string{"audit": components.AuditLog(env)}
		}
	}
	if !o.Quiet {
		sopts.Output = o.Console
	}
	sup, err := supervisor.New(sopts, specs)
	if err != nil {
		return err
	}
	stopStatus, err := serveStatus(SocketPath(dataDir), sup.Handler(), con.panic)
	if err != nil {
		return err
	}
	defer stopStatus()
	// The same status, over TLS to the cluster's admins (kiln status --node).
	// On a master, etcd's members and snapshots too (kiln etcd); on every
	// node, making and removing local volumes' directories (local-storage).
	// And for the operator: the kernel's messages, reboot, power-off,
	// reset, and on a master the relay to the other nodes (kiln logs,
	// dmesg, reboot, shutdown, reset --node).
	servingCert, servingKey := components.NodeAPIServingFiles(env)
	op := operatorOf(env, o.Power)
	for _, addr := range nodeAPIAddresses(&cfg) {
		stopRemote, err := serveRemoteStatus(net.JoinHostPort(addr, strconv.Itoa(nodeapi.Port)), env.Path("pki", "ca.crt"), servingCert, servingKey,
			withUpgrade(upgradeTarget{role: string(cfg.Role), caHash: cl.CAHash}, o.Upgrade,
				withOperator(op, withVolumes(volumeHostOf(env), withEtcd(env, sup, sup.Handler())))), con.panic)
		if err != nil {
			return err
		}
		defer stopRemote()
	}

	// Every goroutine here runs under panics.Guard: under PID 1 a panic
	// that got out would end PID 1 and reboot the node. The supervisor
	// guards its own goroutines; a panic in Run's own would end the
	// bring-up with an error, which PID 1 reports as fatal.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- panics.Guard(con.panic, "the supervisor", func() error { return sup.Run(runCtx) })
	}()
	go panics.Do(con.panic, "the ready report", func() {
		if reportReady(runCtx, con, sup, specs, env) && o.Upgrade != nil {
			// Every component ready: an image on trial has done its
			// job (PID 1 makes its slot the default).
			o.Upgrade.Ready()
		}
	})
	go reportExits(runCtx, con, sup, time.Second)
	// Certificates renewed in place while the node runs (certs.go).
	rn := &renewer{env: env, certs: components.NodeCerts(env, comps), sup: sup, now: time.Now, readyWait: 5 * time.Minute,
		say: func(format string, args ...any) { con.stage(format, args...) }}
	go rn.run(runCtx, con.panic)

	err = <-done
	con.stage("all components stopped, in order: %s", strings.Join(stopOrder(sup.Status()), ", "))
	return err
}

// nodeAPIAddresses are where the node API listens: the node's address,
// and the addresses of its additional NICs (network.additional), such as
// the management network a kiln cluster master's API is forwarded from.
func nodeAPIAddresses(cfg *node.Config) []string {
	out := []string{cfg.Address}
	for _, a := range cfg.Network.Additional {
		if p, err := netip.ParsePrefix(a.Address); err == nil && p.Addr().String() != cfg.Address {
			out = append(out, p.Addr().String())
		}
	}
	return out
}

// memoryEnv is a component's Go memory settings as environment
// variables, GOMEMLIMIT and GOGC, each unless the environment the node
// was started with has it: a limit the user chose (on the kernel command
// line, under PID 1) is every component's.
func memoryEnv(mem components.MemoryShare, lookup func(string) (string, bool)) []string {
	var env []string
	if _, set := lookup("GOMEMLIMIT"); !set && mem.GoLimit > 0 {
		env = append(env, fmt.Sprintf("GOMEMLIMIT=%dMiB", mem.GoLimit>>20))
	}
	if _, set := lookup("GOGC"); !set && mem.GOGC > 0 {
		env = append(env, "GOGC="+strconv.Itoa(mem.GOGC))
	}
	return env
}

// memoryLine says on the console how the node's memory was shared out;
// "" when its memory is unknown.
func memoryLine(m components.NodeMemory, specs []supervisor.Spec) string {
	if m.Total == 0 {
		return ""
	}
	var limits []string
	var low uint64
	for _, s := range specs {
		for _, e := range s.Env {
			if v, ok := strings.CutPrefix(e, "GOMEMLIMIT="); ok {
				limits = append(limits, s.Name+" "+strings.TrimSuffix(v, "MiB"))
			}
		}
		low += s.MemoryLow
	}
	line := fmt.Sprintf("memory: %d MiB, %d MiB of it protected for the components", m.Total>>20, low>>20)
	if len(limits) > 0 {
		line += "; Go memory limits (MiB): " + strings.Join(limits, ", ")
	} else if v := os.Getenv("GOMEMLIMIT"); v != "" {
		line += "; GOMEMLIMIT=" + v + " from the environment"
	}
	return line
}

// stopOrder reads the order in which components stopped from the
// supervisor's timeline.
func stopOrder(st nodeapi.Status) []string {
	var order []string
	for _, e := range st.Timeline {
		if e.What == "stopped" {
			order = append(order, e.Service)
		}
	}
	return order
}

// reportReady prints one stage line as each component becomes ready, then
// the line a user waits for; false if the node stopped first.
func reportReady(ctx context.Context, con *console, sup *supervisor.Supervisor, specs []supervisor.Spec, env *components.Env) bool {
	for _, s := range specs {
		if err := sup.WaitReady(ctx, s.Name); err != nil {
			return false
		}
		if s.Oneshot {
			con.stage("%s done", s.Name)
		} else {
			con.stage("%s ready", s.Name)
		}
	}
	if env.Config.Role == node.RoleWorker {
		con.stage("worker ready: node %s is running its components (kubectl get nodes on the master's kubeconfig shows it)", env.NodeName)
		return true
	}
	con.stage("%s ready: kubectl --kubeconfig %s get nodes", env.Config.Role,
		filepath.Join(env.Cluster.Dir, "admin.kubeconfig"))
	return true
}

// checkAddressRanges refuses a node address inside the cluster's service or
// pod range: kube-proxy drops traffic to service IPs it has not allocated,
// so the node could not even reach itself.
func checkAddressRanges(addr string, cl *cluster.Cluster) error {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return nil // Validate reports it
	}
	for _, r := range []struct{ name, cidr string }{{"serviceCIDR", cl.ServiceCIDR}, {"podCIDR", cl.PodCIDR}} {
		if p, err := netip.ParsePrefix(r.cidr); err == nil && p.Contains(ip) {
			return fmt.Errorf("node address %s is inside the cluster's %s %s (%s): give the node an address outside it, or generate the cluster with other ranges",
				addr, r.name, r.cidr, cl.Dir+"/cluster.yaml")
		}
	}
	return nil
}

// presentDeps drops the dependencies on components this node does not run
// (a master's kubelet does not wait for a worker's join).
func presentDeps(deps []string, comps []components.Component) []string {
	var out []string
	for _, d := range deps {
		for _, c := range comps {
			if c.Name() == d {
				out = append(out, d)
				break
			}
		}
	}
	return out
}

// exitSource is what reportExits reads: the supervisor.
type exitSource interface {
	EventsSince(n uint64) ([]nodeapi.Event, uint64)
	Logs(name string) ([]string, bool)
}

// reportExits puts every component exit on the console with the last line
// the component wrote, so a crash or a failed join (wrong CA, refused
// token) is visible where a person looks, not only in the log files. It
// follows the supervisor's events by count (EventsSince), not by position
// in the timeline, which is capped: a node that has crash-looped past the
// cap still reports every exit. A panic in one pass is reported and the
// next pass goes on.
func reportExits(ctx context.Context, con *console, sup exitSource, every time.Duration) {
	var seen uint64
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_ = panics.Do(con.panic, "the exit report", func() {
			var evs []nodeapi.Event
			evs, seen = sup.EventsSince(seen)
			for _, e := range evs {
				if !strings.HasPrefix(e.What, "exited") && !strings.HasPrefix(e.What, "start failed") {
					continue
				}
				last := ""
				if lines, ok := sup.Logs(e.Service); ok && len(lines) > 0 {
					last = ": " + strings.TrimSpace(lines[len(lines)-1])
				}
				con.stage("%s %s%s", e.Service, e.What, last)
			}
		})
	}
}

// checkPorts fails early, naming the port and the component, when an
// address a component binds is taken: otherwise that component would only
// crash-loop.
func checkPorts(env *components.Env, comps []components.Component) error {
	var errs []error
	for _, c := range comps {
		l, ok := c.(components.Listener)
		if !ok {
			continue
		}
		for _, addr := range l.Listens(env) {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s needs %s, which is not free: %w (stop what uses it, or choose another port in the node config's ports section)", c.Name(), addr, unwrapSyscall(err)))
				continue
			}
			ln.Close()
		}
	}
	return errors.Join(errs...)
}

func unwrapSyscall(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}

// serveStatus serves the supervisor's status and logs on a unix socket only
// root (the data dir's owner) can open.
func serveStatus(path string, h http.Handler, report func(string)) (func(), error) {
	listen := func() (net.Listener, error) {
		_ = os.Remove(path) // a stale socket from a killed run; the lock says no one else owns it
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("status socket: %w", err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, err
		}
		return ln, nil
	}
	ln, err := listen()
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go serve(srv, ln, listen, "the status socket's server", report)
	return func() {
		srv.Close()
		os.Remove(path)
	}, nil
}

// serveRestartBase is the pause before a server that panicked serves
// again (tests shorten it).
var serveRestartBase = time.Second

// serve runs srv on ln until srv is closed. net/http already survives a
// panic in a handler or a TLS handshake (it logs it and drops that
// connection); a panic in Serve itself is reported here and, since Serve
// closes its listener on the way out, serving starts again on a new one
// from listen after a pause, so the status stays reachable.
func serve(srv *http.Server, ln net.Listener, listen func() (net.Listener, error), what string, report func(string)) {
	for {
		err := panics.Guard(report, what, func() error { return srv.Serve(ln) })
		var pe *panics.Error
		if !errors.As(err, &pe) {
			return // closed, or the listener failed
		}
		time.Sleep(serveRestartBase)
		if ln, err = listen(); err != nil {
			report(fmt.Sprintf("kiln: %s not started again: %v\n", what, err))
			return
		}
	}
}
