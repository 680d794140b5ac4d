package boot

import (
	"context"
	"errors"
	"time"

	"kiln/init/boot/console"
	"kiln/internal/ctxutil"
	"kiln/internal/panics"
)

// A step is one named piece of the boot. The boot runs its steps one after
// the other, in the order of sequence: each needs what the ones before it
// made (the config drive needs the block and file system modules, the
// remote config the network), so no two foreground steps run at once.
//
// A foreground step (run) is waited for; it prints "<name> done (1.23s)"
// and its error ends the boot. A background step (loop) is started in a
// goroutine of its own that lives as long as PID 1 needs it (the zombie
// reaper, the power button, the DHCP lease): it prints "<name> started",
// or "<name> not started: <why>" when skip says so. A panic in either is
// reported; it fails a foreground step, and a background step is started
// again after a pause (keepLooping).
type step struct {
	name string
	run  func(ctx context.Context) error
	loop func(ctx context.Context)
	// skip, if set, says why a background step has nothing to do ("" to
	// start it); it is asked when the step's turn comes.
	skip func() string
}

// sequence is the boot, in order.
func (m *machine) sequence() []step {
	steps := []step{
		{name: "mounts", run: m.mounts},
		// The reaper scans /proc, mounted just before.
		{name: "reaper", loop: m.reapZombies},
		{name: "modules", run: m.modules},
	}
	if m.slots != nil {
		// A disk boot: the boot partition (vfat, a module just loaded)
		// says whether this boot is an upgrade's trial, before any
		// later step can fail it (trial.go).
		steps = append(steps, step{name: "slots", run: m.slotsStep})
	}
	return append(steps, []step{
		// The power button is an input device of the modules just loaded
		// (button, evdev).
		{name: "power button", loop: m.powerButton},
		{name: "config", run: m.localConfig},
		// The network step also fetches kiln.config=http://... once the
		// interface is up.
		{name: "network", run: m.network},
		{name: "dhcp", loop: m.keepLease, skip: m.noLease},
		{name: "hostname", run: m.hostname},
		{name: "storage", run: m.storage},
	}...)
}

// boot runs the sequence; it reports to bootDone.
func (m *machine) boot() {
	m.bootDone <- guard(m.con, "the boot", func() error {
		for _, s := range m.sequence() {
			if err := m.runStep(s); err != nil {
				return err
			}
			if err := m.ctx.Err(); err != nil {
				return err
			}
		}
		return nil
	})
}

// runStep runs a foreground step, or starts a background one.
func (m *machine) runStep(s step) error {
	if s.loop != nil {
		if s.skip != nil {
			if why := s.skip(); why != "" {
				m.con.Stage("%s not started: %s", s.name, why)
				return nil
			}
		}
		m.con.Stage("%s started", s.name)
		go m.keepLooping(s)
		return nil
	}
	start := time.Now()
	// The error goes up as it is: the FATAL line names the source (a
	// config file, a disk), not the step.
	if err := guard(m.con, s.name, func() error { return s.run(m.ctx) }); err != nil {
		return err
	}
	m.con.Stage("%s done (%.2fs)", s.name, time.Since(start).Seconds())
	return nil
}

// loopRestartBase is the first pause before a background step that
// panicked is started again; it doubles up to loopRestartMax (tests
// shorten it).
var loopRestartBase = time.Second

const loopRestartMax = time.Minute

// keepLooping runs a background step's loop for as long as PID 1 needs
// it (guardLoop): the zombie reaper, the power button and the DHCP lease
// are needed as long as the node runs, and a lease nobody renews takes the
// node's address away. A loop that returns on its own (nothing left to
// watch) or because the node is stopping ends the step.
func (m *machine) keepLooping(s step) {
	guardLoop(m.ctx, m.con, s.name, func() error { s.loop(m.ctx); return nil })
}

// guardLoop runs f under guard until it returns by itself or ctx ends. A
// panic is reported, "<what> stopped: <panic>; the node stays up,
// starting <what> again in <pause>", and f runs again after the pause (1
// s, doubling to a minute).
func guardLoop(ctx context.Context, con *console.Console, what string, f func() error) {
	delay := loopRestartBase
	for {
		err := guard(con, what, f)
		var pe *panics.Error
		if !errors.As(err, &pe) || ctx.Err() != nil {
			return
		}
		con.Warn("%s stopped: %v; the node stays up, starting %s again in %s", what, err, what, delay)
		if ctxutil.Sleep(ctx, delay) != nil {
			return
		}
		con.Stage("%s started again", what)
		delay = min(2*delay, loopRestartMax)
	}
}

// guard runs f and turns a panic in it into an error, "<what> panicked:
// <value>", after printing "kiln: PANIC in <what>: <value>" and the stack
// to the console (internal/panics, which the supervisor and the bring-up
// use too). Every goroutine PID 1 starts runs under it: a panic that got
// out would end PID 1, and the kernel with it.
func guard(con *console.Console, what string, f func() error) error {
	return panics.Guard(con.Raw, what, f)
}
