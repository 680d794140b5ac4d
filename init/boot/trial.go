package boot

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"kiln/configs/image"
	"kiln/configs/nodeapi"
	"kiln/init/slots"
	"kiln/internal/ctxutil"
)

// PID 1's side of the A/B slots (init/slots, kiln upgrade). On a disk
// boot the "slots" step reads the boot partition's record: a boot on trial
// (kiln.trial=SLOT) starts its deadline, and a boot of the default slot
// learns whether an upgrade's trial ended without reporting (it died: the
// firmware brought the node back here) and says so. The node API writes
// an upgrade through Upgrades.Install; the bring-up reports the node ready
// through Upgrades.Ready, which makes a slot on trial the default; a fatal
// error or the deadline on trial reboots into the default slot instead.

// trialFailPause lets the console show why before a failed trial reboots.
const trialFailPause = 5 * time.Second

// slotKeeper is the machine's view of its slots; nil when it was not
// booted from a kiln disk.
type slotKeeper struct {
	boot, slot string // kiln.boot=, kiln.slot= (a when absent)
	trial      bool   // kiln.trial= names this slot

	mu      sync.Mutex
	settled bool // the trial ended (good or rolled back), or there is none
	state   slots.State
	usable  bool // the boot partition was read: upgrades can be written
}

// settle ends the trial once: true for the caller that ended it (false
// on a machine without slots, or a trial already ended).
func (k *slotKeeper) settle() bool {
	if k == nil {
		return false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.settled {
		return false
	}
	k.settled = true
	return true
}

// diskBoot reports whether the node booted from a kiln disk.
func diskBoot(boot string) bool { return boot == image.BootQcow2BIOS || boot == image.BootQcow2UEFI }

// newSlotKeeper reads the slot facts from the command line; nil on a boot
// that is not from a kiln disk.
func newSlotKeeper(boot, slot, trial string) *slotKeeper {
	if !diskBoot(boot) {
		return nil
	}
	if !image.ValidSlot(slot) {
		slot = image.SlotA
	}
	k := &slotKeeper{boot: boot, slot: slot, trial: trial != "" && trial == slot}
	k.settled = !k.trial
	return k
}

// readRelease is os-release's VERSION_ID: the image's release.
func readRelease(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VERSION_ID="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// withPartition mounts the boot partition for f.
func withPartition(f func(p *slots.Partition) error) error {
	p, err := slots.Mount(slots.MountDir)
	if err != nil {
		return err
	}
	err = f(p)
	if uerr := p.Unmount(); err == nil {
		err = uerr
	}
	return err
}

// slotsStep is the boot's "slots" step.
func (m *machine) slotsStep(ctx context.Context) error {
	k := m.slots
	now := time.Now()
	err := withPartition(func(p *slots.Partition) error {
		st, err := p.Read()
		if err != nil {
			return err
		}
		if k.trial {
			if rec, ok := st.Slots[k.slot]; ok && rec.OneShot {
				// The firmware trial: the configs go back to the
				// default slot before anything can fail here.
				if err := p.RestoreConfigs(); err != nil {
					return fmt.Errorf("putting back the bootloaders' configs: %w", err)
				}
				rec.OneShot = false
				st.Slots[k.slot] = rec
			}
			if st.Trial == nil || st.Trial.Slot != k.slot || st.Trial.Result != nodeapi.TrialRunning {
				st.Trial = &nodeapi.TrialResult{Slot: k.slot, Result: nodeapi.TrialRunning, Started: now,
					Deadline: now.Add(nodeapi.DefaultTrialTimeout)}
			}
		} else if t := st.Trial; t != nil && t.Result == nodeapi.TrialRunning && t.Slot != k.slot {
			// A trial that never reported: its kernel or PID 1 died,
			// hung past a reset, or the machine was powered off.
			t.Result, t.Ended = nodeapi.TrialRolledBack, now
			t.Reason = "the image on trial stopped before its PID 1 could report (its kernel or stage 1 failed, it hung until a reset, or the machine was powered off)"
		}
		if err := p.Write(st); err != nil {
			return err
		}
		k.mu.Lock()
		k.state, k.usable = st, true
		k.mu.Unlock()
		return nil
	})
	k.mu.Lock()
	st := k.state
	k.mu.Unlock()
	if err != nil {
		// Not fatal: the node runs; only upgrades are out of reach.
		m.con.Warn("slots: %v; this node cannot be upgraded in place until that is mended", err)
	}
	if k.trial {
		started, deadline := now, now.Add(nodeapi.DefaultTrialTimeout)
		if st.Trial != nil {
			started, deadline = st.Trial.Started, st.Trial.Deadline
		}
		m.con.Stage("slots: booted slot %s on trial (release %s): it becomes the default once the node is ready, by %s; else the node reboots into slot %s",
			k.slot, m.release, deadline.UTC().Format("15:04:05"), image.OtherSlot(k.slot))
		go guardLoop(m.ctx, m.con, "the trial's deadline", func() error {
			if ctxutil.Sleep(m.ctx, time.Until(deadline)) == nil {
				m.failTrial(fmt.Sprintf("the node was not ready within %s", deadline.Sub(started).Round(time.Second)))
			}
			return nil
		})
		return nil
	}
	m.con.Stage("slots: booted slot %s (default %s)", k.slot, st.Default)
	if t := st.Trial; t != nil && t.Result == nodeapi.TrialRolledBack {
		m.con.Warn("the last upgrade, to release %s (slot %s), was rolled back at %s: %s", t.Release, t.Slot, t.Ended.UTC().Format(time.RFC3339), t.Reason)
	}
	return nil
}

// failTrial ends a trial that failed: the reason on the boot partition and
// the console, then a reboot through the firmware, which boots the
// default slot.
func (m *machine) failTrial(reason string) {
	k := m.slots
	if !k.settle() {
		return
	}
	m.con.Raw(fmt.Sprintf("kiln: UPGRADE FAILED: the image on trial in slot %s (release %s): %s; rebooting into slot %s\n",
		k.slot, m.release, reason, image.OtherSlot(k.slot)))
	if err := withPartition(func(p *slots.Partition) error {
		st, err := p.Read()
		if err != nil {
			return err
		}
		if st.Trial == nil {
			st.Trial = &nodeapi.TrialResult{Slot: k.slot}
		}
		st.Trial.Result, st.Trial.Reason, st.Trial.Ended = nodeapi.TrialRolledBack, reason, time.Now()
		k.mu.Lock()
		k.state = st
		k.mu.Unlock()
		return p.Write(st)
	}); err != nil {
		m.con.Warn("slots: recording the failed trial: %v", err)
	}
	time.Sleep(trialFailPause)
	send(m.power, powerRequest{Reboot: true, Why: "the upgrade's trial failed"})
}

// trialGood makes the slot on trial the default: the node came up on it.
func (m *machine) trialGood() {
	k := m.slots
	if !k.settle() {
		return
	}
	err := withPartition(func(p *slots.Partition) error {
		st, err := p.Read()
		if err != nil {
			return err
		}
		rec, ok := st.Slots[k.slot]
		if !ok {
			return fmt.Errorf("%s has no record of slot %s", image.SlotsFile, k.slot)
		}
		if err := p.PointConfigs(k.slot, rec, nil, false); err != nil {
			return err
		}
		st.Default = k.slot
		if st.Trial != nil {
			st.Trial.Result, st.Trial.Ended = nodeapi.TrialGood, time.Now()
		}
		k.mu.Lock()
		k.state = st
		k.mu.Unlock()
		return p.Write(st)
	})
	if err != nil {
		k.mu.Lock()
		k.settled = false
		k.mu.Unlock()
		m.failTrial("making the slot the default: " + err.Error())
		return
	}
	m.con.Stage("slots: the node is ready on slot %s (release %s): it is the default boot now", k.slot, m.release)
}

// imageStatus is Status.Image.
func (m *machine) imageStatus() *nodeapi.ImageStatus {
	boot, _ := m.cmdline.Get(image.ParamBoot)
	st := &nodeapi.ImageStatus{Role: string(m.cfg.Role), Release: m.release, Boot: boot}
	k := m.slots
	if k == nil {
		return st
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	st.Slot, st.Default = k.slot, k.state.Default
	st.Trial = k.trial && !(k.state.Trial != nil && k.state.Trial.Result == nodeapi.TrialGood)
	if len(k.state.Slots) > 0 {
		st.Slots = map[string]nodeapi.SlotImage{}
		for name, r := range k.state.Slots {
			st.Slots[name] = r.SlotImage
		}
	}
	if t := k.state.Trial; t != nil {
		c := *t
		st.LastUpgrade = &c
	}
	return st
}

// installUpgrade writes an upgrade to the slot not booted, records its
// trial and asks for a reboot into it by kexec (the firmware if kexec is
// refused). It returns once the slot is written; the reboot follows.
func (m *machine) installUpgrade(u nodeapi.Upgrade, kernel, initrd io.Reader) (nodeapi.UpgradeAccepted, error) {
	k := m.slots
	if k == nil {
		return nodeapi.UpgradeAccepted{}, slots.ErrNoSlots
	}
	k.mu.Lock()
	busy, usable := !k.settled, k.usable
	k.mu.Unlock()
	if busy {
		return nodeapi.UpgradeAccepted{}, slots.ErrOnTrial
	}
	if !usable {
		return nodeapi.UpgradeAccepted{}, fmt.Errorf("%w (its boot partition could not be read at boot: see its console)", slots.ErrNoSlots)
	}
	target := image.OtherSlot(k.slot)
	timeout := u.TrialTimeout
	if timeout <= 0 {
		timeout = nodeapi.DefaultTrialTimeout
	}
	now := time.Now()
	rec := slots.SlotRecord{SlotImage: nodeapi.SlotImage{ImageID: u.ImageID, Release: u.Release}, Cmdline: u.Cmdline}
	err := withPartition(func(p *slots.Partition) error {
		st, err := p.Read()
		if err != nil {
			return err
		}
		// The slot is being replaced: until it is whole again nothing
		// may boot it, and nothing does (it is not the default).
		if st.Slots == nil {
			st.Slots = map[string]slots.SlotRecord{}
		}
		if _, ok := st.Slots[k.slot]; !ok {
			st.Slots[k.slot] = slots.SlotRecord{SlotImage: nodeapi.SlotImage{Release: m.release}}
		}
		delete(st.Slots, target)
		if err := p.Write(st); err != nil {
			return err
		}
		if err := p.Install(target, u, kernel, initrd); err != nil {
			return err
		}
		st.Slots[target] = rec
		st.Trial = &nodeapi.TrialResult{Slot: target, ImageID: u.ImageID, Release: u.Release,
			Result: nodeapi.TrialRunning, Started: now, Deadline: now.Add(timeout)}
		k.mu.Lock()
		k.state = st
		k.mu.Unlock()
		return p.Write(st)
	})
	if err != nil {
		return nodeapi.UpgradeAccepted{}, err
	}
	cmdline := image.CommandLine(u.Cmdline, k.boot, target) + " " + image.Arg(image.ParamTrial, target)
	kexecLoad := func() error {
		p, err := slots.Mount(slots.MountDir)
		if err != nil {
			return err
		}
		// Left mounted: the way down unmounts it after the load.
		kerr := p.LoadKexec(target, cmdline)
		if kerr == nil {
			return nil
		}
		// Through the firmware instead: the configs name the slot on
		// trial for this one boot, and its PID 1 puts them back.
		st, err := p.Read()
		if err == nil {
			r := st.Slots[target]
			r.OneShot = true
			st.Slots[target] = r
			if err = p.PointConfigs(target, r, []string{image.Arg(image.ParamTrial, target)}, true); err == nil {
				err = p.Write(st)
			}
		}
		if err != nil {
			return fmt.Errorf("kexec: %v; and the firmware trial could not be prepared: %v (the node reboots into slot %s)", kerr, err, k.slot)
		}
		return fmt.Errorf("kexec: %v; rebooting through the firmware into slot %s on trial", kerr, target)
	}
	go func() {
		time.Sleep(500 * time.Millisecond) // the 202 reaches the client first
		send(m.power, powerRequest{Reboot: true, Why: fmt.Sprintf("kiln upgrade: release %s in slot %s, on trial", u.Release, target), Kexec: kexecLoad})
	}()
	return nodeapi.UpgradeAccepted{Slot: target,
		Message: fmt.Sprintf("slot %s written (release %s, image %s); the node stops its components and boots it on trial (kexec, else the firmware): it has %s to be ready, else it comes back to slot %s",
			target, u.Release, u.ImageID, timeout, k.slot)}, nil
}

// Upgrades is PID 1's side of kiln upgrade, for the bring-up's node API
// (init/up.Upgrader).
type Upgrades struct{ m *machine }

// Image is the image the node runs and its slots.
func (u Upgrades) Image() *nodeapi.ImageStatus { return u.m.imageStatus() }

// Install writes an upgrade and reboots into it on trial.
func (u Upgrades) Install(up nodeapi.Upgrade, kernel, initrd io.Reader) (nodeapi.UpgradeAccepted, error) {
	return u.m.installUpgrade(up, kernel, initrd)
}

// Ready tells PID 1 the node is ready: a slot on trial becomes the
// default.
func (u Upgrades) Ready() { u.m.trialGood() }
