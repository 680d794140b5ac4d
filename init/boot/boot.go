// Package boot is PID 1 of a kiln appliance. PID1 reads the kernel
// command line once (stage 1, init/stage1, has mounted the root image and
// executed it), then runs the boot: a
// sequence of named steps (mounts, modules, config, network, hostname,
// storage), each printing one timestamped line to the console, with the
// long-lived helpers (zombie reaper, power button, DHCP lease) started as
// steps of their own. It then hands the node to the role's bring-up, and
// powers off or reboots cleanly when asked (ACPI power button, SIGTERM,
// ctrl-alt-del).
//
// PID 1 never exits and never panics the kernel: a failed step (a
// malformed config, a state disk it must not format) is printed as
// "kiln: FATAL: ..." every 30 seconds while the node stays up, still
// answering the power button.
//
// The leaves that need no machine state live in sub-packages: console
// (the stage lines), cmdline (the kernel command line), blkdev (what a
// block device holds) and netconf (addresses, DHCP, resolv.conf).
package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/init/boot/cmdline"
	"kiln/init/boot/console"
	"kiln/init/boot/netconf"
)

// Node is what the boot hands to the role's bring-up once the machine is
// ready.
type Node struct {
	Config     node.Config     // the resolved node config
	ClusterDir string          // image.ClusterDir (the cluster material baked into the image)
	DataDir    string          // /var/lib/kiln (on the state disk, or tmpfs when diskless)
	Console    io.Writer       // writes to the console
	Started    time.Time       // kernel start (now minus /proc/uptime), origin of the stage timestamps
	CgroupRoot string          // /sys/fs/cgroup/kiln (controllers enabled for the children)
	Cmdline    cmdline.Cmdline // the kernel command line, as PID 1 read it once
	// Stages returns the console's stage lines so far, stage 1's first:
	// the boot timeline of the node's status.
	Stages func() []console.Stage
	// Power asks PID 1 to reboot (reboot true) or power off, the clean
	// way, as the ACPI power button does; it returns at once. why is for
	// the console.
	Power func(reboot bool, why string)
	// Upgrades is the image the node runs, and on a disk with slots the
	// way to write and boot an upgrade (kiln upgrade) and to tell PID 1
	// the node is ready (a slot on trial becomes the default).
	Upgrades Upgrades
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
	console.EnsureStdFds()
	if os.Getenv("PATH") == "" {
		// The kernel gives init no PATH; exec.LookPath and every child
		// need one.
		os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	con := console.New(os.Stderr, console.KernelStart())
	// Stage 1's lines, for the boot timeline of the node's status; not
	// for the components' environment.
	con.Record(console.DecodeStages(os.Getenv(console.StagesEnv)))
	os.Unsetenv(console.StagesEnv)
	setMemoryLimit(con)
	m := newMachine(con, up)
	// Signals first: from here on SIGTERM is a request, not the runtime
	// exiting.
	watchSignals(con, m.power, nil)
	early, err := readEarlyProc()
	if err != nil {
		con.Warn("reading /proc before the early mounts: %v", err)
	}
	m.cmdline = early.cmdline
	m.release = readRelease(image.OSReleaseFile)
	boot, _ := m.cmdline.Get(image.ParamBoot)
	slot, _ := m.cmdline.Get(image.ParamSlot)
	trial, _ := m.cmdline.Get(image.ParamTrial)
	m.slots = newSlotKeeper(boot, slot, trial)
	checkRoot(con, early)
	for {
		err := guard(con, "PID 1's main loop", func() error { m.loop(); return nil })
		// Only a panic gets here: loop again, without booting again.
		if err != nil && m.fatalErr == nil {
			m.fail(err)
		}
	}
}

// machine is PID 1's state.
type machine struct {
	con    *console.Console
	up     func(context.Context, Node) error
	ctx    context.Context // cancelled when the node is asked to stop
	cancel context.CancelFunc
	power  chan powerRequest

	// cmdline is the kernel command line, read before the boot starts.
	cmdline cmdline.Cmdline
	// release is the image's (os-release's VERSION_ID); slots its A/B
	// slots, nil unless it booted from a kiln disk (trial.go).
	release string
	slots   *slotKeeper

	// Boot results, written by the boot goroutine before it reports
	// done.
	stack       *configStack
	remote      string
	cfg         node.Config
	net         netconf.State
	dhcp        *netconf.DHCP // nil: no lease to keep
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

func newMachine(con *console.Console, up func(context.Context, Node) error) *machine {
	ctx, cancel := context.WithCancel(context.Background())
	return &machine{
		con: con, up: up, ctx: ctx, cancel: cancel,
		power:    make(chan powerRequest, 4),
		bootDone: make(chan error, 1),
		upDone:   make(chan error, 1),
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
				m.fail(err)
				continue
			}
			m.startUp()
		case err := <-m.upDone:
			m.upRunning = false
			if m.ctx.Err() == nil {
				if err == nil {
					err = errors.New("returned before the node was asked to stop")
				}
				m.fail(fmt.Errorf("node %s: %w", m.cfg.Role, err))
			}
		case <-tick.C:
			if m.fatalErr != nil {
				m.reportFatal()
			}
		}
	}
}

// fail makes err the node's fatal error and reports it; the main loop
// repeats the report every fatalRepeat.
func (m *machine) fail(err error) {
	m.fatalErr = err
	m.reportFatal()
	if m.slots != nil && m.slots.trial {
		// On trial a fatal error ends the trial: back to the slot
		// that worked (failTrial does it once).
		go guard(m.con, "the failed trial", func() error { m.failTrial(err.Error()); return nil })
	}
}

// reportFatal prints the fatal error the way a console watcher (a person,
// a test, kiln cluster) looks for it.
func (m *machine) reportFatal() {
	m.con.Fatal(m.fatalErr)
	m.con.Stage("the node stays up to report this; power it off (ACPI) to stop it")
}

// startUp hands the node to the role.
func (m *machine) startUp() {
	n := Node{
		Config:     m.cfg,
		ClusterDir: image.ClusterDir,
		DataDir:    DataDir,
		Console:    m.con,
		Started:    m.con.Started(),
		CgroupRoot: CgroupRoot,
		Cmdline:    m.cmdline,
		Stages:     m.con.Stages,
		Power: func(reboot bool, why string) {
			send(m.power, powerRequest{Reboot: reboot, Why: why})
		},
		Upgrades: Upgrades{m},
	}
	m.con.Stage("up: %s %s, data %s", n.Config.Role, n.Config.Hostname, n.DataDir)
	m.upRunning = true
	go func() {
		m.upDone <- guard(m.con, "the role's bring-up", func() error { return m.up(m.ctx, n) })
	}()
}

// shutdown stops the node: cancel the context, give up (the supervisor)
// time to stop the components, then finish. A second request while
// waiting skips the wait.
func (m *machine) shutdown(req powerRequest) {
	m.down = &req
	m.con.Stage("%s requested (%s)", req.action(), req.Why)
	m.cancel()
	timeout := time.NewTimer(upStopTimeout)
	defer timeout.Stop()
	for m.upRunning || m.bootBusy {
		select {
		case err := <-m.upDone:
			m.upRunning = false
			if err != nil && !errors.Is(err, context.Canceled) {
				m.con.Warn("node stopped with an error: %v", err)
			}
		case <-m.bootDone:
			m.bootBusy = false
		case r := <-m.power:
			m.con.Stage("%s requested again (%s): not waiting any longer", r.action(), r.Why)
			m.finish(req)
		case <-timeout.C:
			m.con.Warn("the node did not stop within %s; going down anyway", upStopTimeout)
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
	kexec := false
	if req.Reboot && req.Kexec != nil {
		err := guard(m.con, "loading the kernel for kexec", req.Kexec)
		if err != nil {
			m.con.Warn("%v", err)
		}
		kexec = err == nil
		req.Kexec = nil // a panic on the way down does not load it again
		m.down = &req
	}
	n := unmountAll(m.con)
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	switch {
	case kexec:
		cmd = unix.LINUX_REBOOT_CMD_KEXEC
		m.con.Stage("unmounted %d file systems; reboot by kexec", n)
	case req.Reboot:
		cmd = unix.LINUX_REBOOT_CMD_RESTART
		fallthrough
	default:
		m.con.Stage("unmounted %d file systems; %s", n, req.action())
	}
	err := unix.Reboot(cmd)
	// Only a PID 1 without CAP_SYS_BOOT gets here.
	m.con.Fatal(fmt.Errorf("%s: %v", req.action(), err))
	for {
		time.Sleep(time.Hour)
	}
}
