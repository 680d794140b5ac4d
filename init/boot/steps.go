package boot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"kiln/configs/cluster"
	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/init/boot/blkdev"
	"kiln/init/boot/kmod"
	"kiln/init/boot/netconf"
)

// The steps of the boot, in the order of sequence.

func (m *machine) mounts(ctx context.Context) error {
	warnings, err := createAll(earlyRoot)
	// The console moves to /dev/console as soon as devtmpfs is there,
	// even if a later mount failed.
	if aerr := m.con.Attach(); aerr != nil {
		m.con.Warn("console: %v", aerr)
	}
	for _, w := range warnings {
		m.con.Warn("%s", w)
	}
	// Said once, on the attached console: how the machine booted frames every line after it.
	if v, ok := m.cmdline.Get(image.ParamBoot); ok {
		m.con.Stage("booted from %s", v)
	}
	if err != nil {
		return fmt.Errorf("early mounts: %w", err)
	}
	for _, s := range earlyRoot {
		if c, ok := s.(*CgroupTree); ok {
			m.con.Stage("cgroups: %s for %s and its children; PID 1 in %s", strings.Join(c.Enabled, " "), c.Root, c.Init)
		}
	}
	if err := disableCAD(); err != nil {
		m.con.Warn("ctrl-alt-del: %v", err)
	}
	return nil
}

// reapZombies reaps the orphans PID 1 inherits until PID 1 ends: it
// ignores ctx, because the way down (killAll) makes zombies too.
func (m *machine) reapZombies(context.Context) {
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, unix.SIGCHLD)
	newReaper().run(sigchld, nil, 10*time.Second)
}

func (m *machine) modules(ctx context.Context) error {
	rel := kmod.Release()
	r, err := kmod.Load(image.ModulesFile, "/lib/modules/"+rel)
	if err != nil {
		return fmt.Errorf("modules: %w", err)
	}
	for _, w := range r.Warnings {
		m.con.Warn("%s", w)
	}
	m.con.Stage("modules: %s (kernel %s)", r, rel)
	return nil
}

// powerButton turns presses of the ACPI power button into power-off
// requests.
func (m *machine) powerButton(ctx context.Context) {
	watchPowerButton(ctx, m.con, m.power)
}

func (m *machine) localConfig(ctx context.Context) error {
	stack, remote, err := localConfig(configInputs{
		Embedded: image.ConfigFile,
		Drive: func() (string, []byte, error) {
			return readConfigDrive(blkdev.List("/sys/class/block", "/dev"), "/run/kiln/config-drive", m.con.Warn)
		},
		Cmdline: m.cmdline,
	})
	if err != nil {
		return err
	}
	cfg, err := stack.resolve()
	if err != nil {
		return err
	}
	m.stack, m.remote, m.cfg = stack, remote, cfg
	more := ""
	if remote != "" {
		more = fmt.Sprintf("; %s=%s once the network is up", image.ParamConfig, remote)
	}
	m.con.Stage("config: role %s from %s%s", cfg.Role, strings.Join(stack.sources(), ", "), more)
	return nil
}

func (m *machine) network(ctx context.Context) error {
	dhcp, err := netconf.Setup(ctx, m.con, m.cfg.Network, &m.net)
	if err != nil {
		return err
	}
	m.dhcp = dhcp
	if m.remote != "" {
		if err := m.remoteConfig(ctx); err != nil {
			return err
		}
	}
	// A config that does not choose the node's address gets the one the
	// network gave: the components must be reachable from the other
	// nodes, and 127.0.0.1 (the default) is not.
	if p := m.net.Get(); p != nil && !m.stack.addressSet() {
		m.cfg.Address = p.Addr.Addr().String()
		m.con.Stage("config: address %s (from %s; set address: in the config to choose another)", m.cfg.Address, p.Interface)
	}
	// Last: the node's address and whether it runs kube-proxy are known
	// only now (a fetched config may set either).
	m.serviceRoute()
	return nil
}

// serviceRoute makes the network keep a route for the node's own traffic
// to the cluster's Services when nothing else covers the range
// (netconf/svcroute.go), before any component starts: a master's API
// server calls webhooks at their ClusterIPs from its first minute. Not
// being able to is a warning: only that traffic depends on it.
func (m *machine) serviceRoute() {
	want, ok, err := serviceRange(m.cfg, image.ClusterDir)
	switch {
	case err != nil:
		m.con.Warn("network: no route for the cluster's Services: %v", err)
	case ok:
		m.net.SetServiceRange(m.con, want)
	}
}

// serviceRange is the range a node's own traffic to Services needs a
// route for, from the cluster's cluster.yaml in clusterDir (the image's
// cluster directory), and the node's address. ok is false on a node that
// runs no kube-proxy (a control-plane-only master: nothing there would
// DNAT a ClusterIP, so a route would only send the packets onto the
// wire), and on an image with no cluster directory (test images; the
// bring-up reports a real image without one).
func serviceRange(cfg node.Config, clusterDir string) (want netconf.ServiceRange, ok bool, err error) {
	if !cfg.RunsPods() {
		return want, false, nil
	}
	if _, err := os.Stat(filepath.Join(clusterDir, cluster.ConfigFile)); errors.Is(err, fs.ErrNotExist) {
		return want, false, nil
	}
	cl, err := cluster.LoadForWorker(clusterDir)
	if err != nil {
		return want, false, err
	}
	if want.CIDR, err = netip.ParsePrefix(cl.ServiceCIDR); err != nil {
		return want, false, fmt.Errorf("cluster serviceCIDR: %w", err)
	}
	if want.NodeIP, err = netip.ParseAddr(cfg.Address); err != nil {
		return want, false, fmt.Errorf("node address: %w", err)
	}
	return want, true, nil
}

// remoteConfig fetches kiln.config=URL and stacks it before the command
// line overrides. The network is already configured: a network section in
// it that differs from the one used is reported.
func (m *machine) remoteConfig(ctx context.Context) error {
	src := image.Arg(image.ParamConfig, m.remote)
	m.con.Stage("config: fetching %s", src)
	data, err := fetchConfig(ctx, m.remote, m.con)
	if err != nil {
		return fmt.Errorf("config %s: %w", src, err)
	}
	m.stack.add(src, data)
	cfg, err := m.stack.resolve()
	if err != nil {
		return err
	}
	if !networkEqual(cfg.Network, m.cfg.Network) {
		m.con.Warn("config %s: its network section is ignored: the network was configured before it was fetched", src)
	}
	m.cfg = cfg
	m.con.Stage("config: role %s from %s", cfg.Role, strings.Join(m.stack.sources(), ", "))
	return nil
}

func networkEqual(a, b node.Network) bool {
	return a.Interface == b.Interface && a.UsesDHCP() == b.UsesDHCP() && a.Address == b.Address &&
		a.Gateway == b.Gateway && strings.Join(a.DNS, " ") == strings.Join(b.DNS, " ")
}

// keepLease renews the DHCP lease the network step got until the node is
// asked to stop.
func (m *machine) keepLease(ctx context.Context) { m.dhcp.Keep(ctx) }

// noLease says why there is no lease to keep.
func (m *machine) noLease() string {
	if m.dhcp == nil {
		return "no DHCP lease to keep (a static address, or no interface)"
	}
	return ""
}

func (m *machine) hostname(ctx context.Context) error {
	name := m.cfg.Hostname
	how := "from the config"
	if name == "" {
		nics := netconf.ListNICs(netconf.SysClassNet)
		name = netconf.DefaultHostname(nics)
		how = "from the first NIC's MAC address"
		if len(nics) == 0 {
			how = "no config hostname and no NIC to name it after"
		}
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("hostname %s: %w", name, err)
	}
	m.cfg.Hostname = name
	addr := ""
	if p := m.net.Get(); p != nil {
		addr = p.Addr.Addr().String()
	}
	if err := netconf.WriteHostFiles(name, addr); err != nil {
		return err
	}
	m.con.Stage("hostname: %s (%s)", name, how)
	return nil
}

func (m *machine) storage(ctx context.Context) error {
	desc, err := setupStorage(ctx, m.con, m.cfg.Storage)
	if err != nil {
		return err
	}
	m.storageDesc = desc
	m.con.Stage("storage: %s", desc)
	return nil
}
