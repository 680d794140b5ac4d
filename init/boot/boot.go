// Package boot is PID 1 of a kiln appliance: it makes the machine ready
// (mounts, cgroups, modules, config, network, hostname, state disk) in named
// phases, each printing one timestamped line to the console, then hands the
// node to the role's bring-up, and powers off or reboots cleanly when asked
// (ACPI power button, SIGTERM, ctrl-alt-del).
//
// PID 1 never exits and never panics the kernel: a failed phase (a
// malformed config, a state disk it must not format) is printed as
// "kiln: FATAL: ..." every 30 seconds while the node stays up, still
// answering the power button.
package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"kiln/configs/node"
	"kiln/images/initramfs"
	"kiln/init/supervisor"
)

// Node is what the boot hands to the role's bring-up once the machine is
// ready.
type Node struct {
	Config     node.Config // the resolved node config
	ClusterDir string      // /etc/kiln/cluster (the cluster material baked into the image)
	DataDir    string      // /var/lib/kiln (on the state disk, or tmpfs when diskless)
	Console    io.Writer   // writes to the console
	Started    time.Time   // kernel start (now minus /proc/uptime), origin of the stage timestamps
	CgroupRoot string      // /sys/fs/cgroup/kiln (controllers enabled for the children)
}

// Timeouts of the way down.
const (
	// upStopTimeout bounds the wait for up to return after its context is
	// cancelled (the supervisor stops the components in reverse order).
	upStopTimeout = 60 * time.Second
	// killTimeout is how long processes left after up get after SIGTERM.
	killTimeout = 5 * time.Second
	// fatalRepeat is how often a fatal error is printed again.
	fatalRepeat = 30 * time.Second
)

// PID1 is the whole life of PID 1. It never returns: up runs the node's
// components until ctx is cancelled (poweroff/reboot request); then PID1
// syncs, unmounts and powers off or reboots.
func PID1(up func(ctx context.Context, n Node) error) {
	ensureStdFds()
	if os.Getenv("PATH") == "" {
		// The kernel gives init no PATH; exec.LookPath and every child
		// need one.
		os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	started := kernelStart()
	con := newConsole(os.Stderr, started)
	m := newMachine(con, up)
	// Signals first: from here on SIGTERM is a request, not the runtime
	// exiting.
	watchSignals(con, m.power, nil)
	func() {
		defer recoverTo(con, "the move to a tmpfs root")
		if err := switchRoot(con); err != nil {
			con.warn("root stays on the initramfs: %v", err)
		}
	}()
	for {
		func() {
			defer m.recoverPanic()
			m.loop()
		}()
		// Only a panic gets here: loop again, without booting again.
	}
}

// machine is PID 1's state.
type machine struct {
	con     *console
	up      func(context.Context, Node) error
	ctx     context.Context // cancelled when the node is asked to stop
	cancel  context.CancelFunc
	power   chan powerRequest
	reapers sync.Once

	// Boot results, written by the boot goroutine before it reports
	// done.
	stack       *configStack
	remote      string
	cfg         node.Config
	net         netState
	storageDesc string

	// Main loop state (the loop's goroutine only).
	booting   bool // the boot goroutine was started
	bootBusy  bool // and has not reported yet
	bootDone  chan error
	upDone    chan error
	upRunning bool
	fatalErr  error
	down      *powerRequest
}

func newMachine(con *console, up func(context.Context, Node) error) *machine {
	ctx, cancel := context.WithCancel(context.Background())
	return &machine{
		con: con, up: up, ctx: ctx, cancel: cancel,
		power:    make(chan powerRequest, 4),
		bootDone: make(chan error, 1),
		upDone:   make(chan error, 1),
	}
}

// recoverPanic reports a panic of the main loop and keeps the node up.
func (m *machine) recoverPanic() {
	if r := recover(); r != nil {
		err := fmt.Errorf("PID 1 panicked: %v", r)
		m.con.raw(fmt.Sprintf("kiln: PANIC: %v\n%s\n", r, debug.Stack()))
		if m.fatalErr == nil {
			m.fatalErr = err
			m.con.fatal(err)
		}
	}
}

// recoverTo reports a panic of a goroutine PID 1 started: the goroutine
// ends, the node stays up.
func recoverTo(con *console, what string) {
	if r := recover(); r != nil {
		con.raw(fmt.Sprintf("kiln: PANIC in %s (recovered; the node stays up): %v\n%s\n", what, r, debug.Stack()))
	}
}

// loop is PID 1's main loop: it starts the boot, then the role's bring-up,
// reports fatal errors, and answers power requests.
func (m *machine) loop() {
	if m.down != nil {
		// A panic on the way down: go straight to the end.
		m.finish(*m.down)
	}
	if !m.booting {
		m.booting, m.bootBusy = true, true
		go m.boot()
	}
	tick := time.NewTicker(fatalRepeat)
	defer tick.Stop()
	for {
		select {
		case req := <-m.power:
			m.shutdown(req)
		case err := <-m.bootDone:
			m.bootBusy = false
			if err != nil {
				m.setFatal(err)
				continue
			}
			m.startUp()
		case err := <-m.upDone:
			m.upRunning = false
			if m.ctx.Err() == nil {
				if err == nil {
					err = errors.New("returned before the node was asked to stop")
				}
				m.setFatal(fmt.Errorf("node %s: %w", m.cfg.Role, err))
			}
		case <-tick.C:
			if m.fatalErr != nil {
				m.con.fatal(m.fatalErr)
				m.con.stage("the node stays up to report this; power it off (ACPI) to stop it")
			}
		}
	}
}

func (m *machine) setFatal(err error) {
	m.fatalErr = err
	m.con.fatal(err)
	m.con.stage("the node stays up to report this; power it off (ACPI) to stop it")
}

// boot runs the phases; it reports to bootDone.
func (m *machine) boot() {
	var err error
	defer func() {
		if r := recover(); r != nil {
			m.con.raw(fmt.Sprintf("kiln: PANIC during boot: %v\n%s\n", r, debug.Stack()))
			err = fmt.Errorf("boot panicked: %v", r)
		}
		m.bootDone <- err
	}()
	for _, p := range m.phases() {
		if err = m.runPhase(p); err != nil {
			return
		}
		if m.ctx.Err() != nil {
			err = m.ctx.Err()
			return
		}
	}
}

// startUp hands the node to the role.
func (m *machine) startUp() {
	n := Node{
		Config:     m.cfg,
		ClusterDir: ClusterDir,
		DataDir:    DataDir,
		Console:    m.con,
		Started:    m.con.started,
		CgroupRoot: CgroupRoot,
	}
	m.con.stage("up: %s %s, data %s", n.Config.Role, n.Config.Hostname, n.DataDir)
	m.upRunning = true
	go func() {
		var err error
		defer func() {
			if r := recover(); r != nil {
				m.con.raw(fmt.Sprintf("kiln: PANIC in the node's bring-up: %v\n%s\n", r, debug.Stack()))
				err = fmt.Errorf("panicked: %v", r)
			}
			m.upDone <- err
		}()
		err = m.up(m.ctx, n)
	}()
}

// shutdown stops the node: cancel the context, give up (the supervisor)
// time to stop the components, then finish. A second request while
// waiting skips the wait.
func (m *machine) shutdown(req powerRequest) {
	m.down = &req
	m.con.stage("%s requested (%s)", req.action(), req.Why)
	m.cancel()
	timeout := time.NewTimer(upStopTimeout)
	defer timeout.Stop()
	for m.upRunning || m.bootBusy {
		select {
		case err := <-m.upDone:
			m.upRunning = false
			if err != nil && !errors.Is(err, context.Canceled) {
				m.con.warn("node stopped with an error: %v", err)
			}
		case <-m.bootDone:
			m.bootBusy = false
		case r := <-m.power:
			m.con.stage("%s requested again (%s): not waiting any longer", r.action(), r.Why)
			m.finish(req)
		case <-timeout.C:
			m.con.warn("the node did not stop within %s; going down anyway", upStopTimeout)
			m.finish(req)
		}
	}
	m.finish(req)
}

// finish kills what is left, syncs, unmounts and powers off or reboots. It
// does not return.
func (m *machine) finish(req powerRequest) {
	m.down = &req
	killAll(m.con, killTimeout)
	unix.Sync()
	n := unmountAll(m.con)
	unix.Sync()
	m.con.stage("unmounted %d file systems; %s", n, req.action())
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if req.Reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	err := unix.Reboot(cmd)
	// Only a PID 1 without CAP_SYS_BOOT gets here.
	m.con.fatal(fmt.Errorf("%s: %v", req.action(), err))
	for {
		time.Sleep(time.Hour)
	}
}

// A phase is a named step of the boot. Its tasks run concurrently; each
// task's failure fails the phase. The phase prints "<name> done" with the
// time since kernel start when all its tasks are done.
type phase struct {
	name  string
	tasks []task
}

type task struct {
	name string
	run  func(ctx context.Context) error
}

func (m *machine) runPhase(p phase) error {
	start := time.Now()
	errs := make([]error, len(p.tasks))
	if len(p.tasks) == 1 {
		errs[0] = m.runTask(p.tasks[0])
	} else {
		var wg sync.WaitGroup
		for i, t := range p.tasks {
			wg.Go(func() {
				tstart := time.Now()
				if errs[i] = m.runTask(t); errs[i] == nil {
					m.con.stage("%s: %s done in %.2fs", p.name, t.name, time.Since(tstart).Seconds())
				}
			})
		}
		wg.Wait()
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	m.con.stage("%s done (%.2fs)", p.name, time.Since(start).Seconds())
	return nil
}

func (m *machine) runTask(t task) (err error) {
	defer func() {
		if r := recover(); r != nil {
			m.con.raw(fmt.Sprintf("kiln: PANIC in %s: %v\n%s\n", t.name, r, debug.Stack()))
			err = fmt.Errorf("%s panicked: %v", t.name, r)
		}
	}()
	return t.run(m.ctx)
}

// phases is the boot, in order.
func (m *machine) phases() []phase {
	return []phase{
		{"mounts", []task{{"mounts", m.mounts}}},
		{"modules", []task{{"modules", m.modules}}},
		{"config", []task{{"config", m.localConfig}}},
		// The network phase also fetches kiln.config=http://... once
		// the interface is up.
		{"network", []task{{"network", m.network}}},
		{"hostname", []task{{"hostname", m.hostname}}},
		{"storage", []task{{"storage", m.storage}}},
	}
}

// checkInitramfsComplete fails when the archive's last entry is missing
// under root: the kernel ran out of memory unpacking the initramfs and
// booted on with part of it (programs and libraries missing at random).
func checkInitramfsComplete(root string) error {
	if _, err := os.Stat(filepath.Join(root, initramfs.CompleteMarker)); err == nil {
		return nil
	}
	mem := ""
	if m := supervisor.ReadMachineMemory(); m != nil {
		mem = fmt.Sprintf(" (it has %d MiB)", m.TotalBytes>>20)
	}
	// The figure is images/build's Manifest.SuggestedMemoryMiB.
	return fmt.Errorf("the initramfs was not unpacked whole (%s is missing; the kernel log says \"Initramfs unpacking failed\"): "+
		"this machine has too little memory%s: give it at least twice the initramfs' raw size (image.json: initramfsRawBytes) plus 192 MiB", initramfs.CompleteMarker, mem)
}

func (m *machine) mounts(ctx context.Context) error {
	warnings, err := createAll(earlyRoot)
	// The console moves to /dev/console as soon as devtmpfs is there,
	// even if a later mount failed.
	if aerr := m.con.attach(); aerr != nil {
		m.con.warn("console: %v", aerr)
	}
	for _, w := range warnings {
		m.con.warn("%s", w)
	}
	if err != nil {
		return fmt.Errorf("early mounts: %w", err)
	}
	if err := checkInitramfsComplete("/"); err != nil {
		return err
	}
	for _, s := range earlyRoot {
		if c, ok := s.(*CgroupTree); ok {
			m.con.stage("cgroups: %s for %s and its children; PID 1 in %s", strings.Join(c.Enabled, " "), c.Root, c.Init)
		}
	}
	// The zombie reaper needs /proc.
	m.reapers.Do(func() {
		sigchld := make(chan os.Signal, 1)
		signal.Notify(sigchld, unix.SIGCHLD)
		r := newReaper()
		go func() {
			defer recoverTo(m.con, "reaper")
			r.run(sigchld, nil, 10*time.Second)
		}()
	})
	if err := disableCAD(); err != nil {
		m.con.warn("ctrl-alt-del: %v", err)
	}
	return nil
}

func (m *machine) modules(ctx context.Context) error {
	rel := kernelRelease()
	r, err := loadModules(ModulesFile, "/lib/modules/"+rel)
	if err != nil {
		return fmt.Errorf("modules: %w", err)
	}
	for _, w := range r.Warnings {
		m.con.warn("%s", w)
	}
	m.con.stage("modules: %s (kernel %s)", r, rel)
	go func() {
		defer recoverTo(m.con, "power button")
		watchPowerButton(m.ctx, m.con, m.power)
	}()
	return nil
}

func (m *machine) localConfig(ctx context.Context) error {
	cl := readCmdline()
	stack, remote, err := localConfig(configInputs{
		Embedded: ConfigFile,
		Drive: func() (string, []byte, error) {
			return readConfigDrive(blockDevices("/sys/class/block", "/dev"), "/run/kiln/config-drive", m.con.warn)
		},
		Cmdline: cl,
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
		more = fmt.Sprintf("; %s=%s once the network is up", ParamConfig, remote)
	}
	m.con.stage("config: role %s from %s%s", cfg.Role, strings.Join(stack.sources(), ", "), more)
	return nil
}

func readCmdline() Cmdline {
	b, _ := os.ReadFile("/proc/cmdline")
	return ParseCmdline(string(b))
}

func (m *machine) network(ctx context.Context) error {
	if err := setupNetwork(ctx, m.con, m.cfg.Network, &m.net); err != nil {
		return err
	}
	if m.remote != "" {
		if err := m.remoteConfig(ctx); err != nil {
			return err
		}
	}
	// A config that does not choose the node's address gets the one the
	// network gave: the components must be reachable from the other
	// nodes, and 127.0.0.1 (the default) is not.
	if p := m.net.get(); p != nil && !m.stack.addressSet() {
		m.cfg.Address = p.Addr.Addr().String()
		m.con.stage("config: address %s (from %s; set address: in the config to choose another)", m.cfg.Address, p.Interface)
	}
	return nil
}

// remoteConfig fetches kiln.config=URL and stacks it before the command
// line overrides. The network is already configured: a network section in
// it that differs from the one used is reported.
func (m *machine) remoteConfig(ctx context.Context) error {
	src := ParamConfig + "=" + m.remote
	m.con.stage("config: fetching %s", src)
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
		m.con.warn("config %s: its network section is ignored: the network was configured before it was fetched", src)
	}
	m.cfg = cfg
	m.con.stage("config: role %s from %s", cfg.Role, strings.Join(m.stack.sources(), ", "))
	return nil
}

func networkEqual(a, b node.Network) bool {
	return a.Interface == b.Interface && a.UsesDHCP() == b.UsesDHCP() && a.Address == b.Address &&
		a.Gateway == b.Gateway && strings.Join(a.DNS, " ") == strings.Join(b.DNS, " ")
}

func (m *machine) hostname(ctx context.Context) error {
	name := m.cfg.Hostname
	how := "from the config"
	if name == "" {
		nics := listNICs(sysClassNet)
		name = defaultHostname(nics)
		how = "from the first NIC's MAC address"
		if len(nics) == 0 {
			how = "no config hostname and no NIC to name it after"
		}
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("hostname %s: %w", name, err)
	}
	m.cfg.Hostname = name
	addr := "127.0.1.1"
	if p := m.net.get(); p != nil {
		addr = p.Addr.Addr().String()
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", addr, name)
	if err := writeFileAtomic("/etc/hosts", []byte(hosts), 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic("/etc/hostname", []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	m.con.stage("hostname: %s (%s)", name, how)
	return nil
}

func (m *machine) storage(ctx context.Context) error {
	desc, err := setupStorage(ctx, m.con, m.cfg.Storage)
	if err != nil {
		return err
	}
	m.storageDesc = desc
	m.con.stage("storage: %s", desc)
	return nil
}
