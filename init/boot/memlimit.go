package boot

import (
	"os"
	"runtime/debug"

	"golang.org/x/sys/unix"

	"kiln/init/boot/console"
)

// PID 1's soft memory limit is a share of the machine's memory, within
// bounds.
const (
	memLimitShare = 16       // 1/16 of the machine
	memLimitMin   = 64 << 20 // the supervisor's rings alone may hold ~4 MiB per component
	memLimitMax   = 256 << 20
)

// setMemoryLimit gives PID 1's Go runtime a soft memory limit sized from
// the machine (pid1MemoryLimit).
//
// Why: the kernel's OOM killer never picks PID 1, but PID 1 still needs
// memory: when the kernel cannot give it a page the Go runtime dies ("out
// of memory"), PID 1 exits, and the kernel panics and reboots the node.
// PID 1's live heap is small (the supervisor's state, each component's
// last 500 lines), but by default the runtime lets the heap grow to twice
// the live heap between collections and keeps freed memory for a while,
// so a burst (a component printing huge lines, many status requests)
// leaves PID 1 holding its peak while the components run the machine
// short. Under the limit the collector runs more often as PID 1 nears it
// and the runtime returns freed memory to the kernel sooner, so PID 1
// stays small before the kernel is short, not after. The limit is soft:
// PID 1 never fails for passing it, it only spends more CPU collecting
// (the runtime caps that at about half a CPU), which is why the floor
// sits well above the most PID 1 should ever hold.
//
// GOMEMLIMIT on the kernel command line (the kernel hands init the
// key=value words it does not know as its environment) takes precedence.
func setMemoryLimit(con *console.Console) {
	if os.Getenv("GOMEMLIMIT") != "" {
		con.Stage("PID 1 memory limit: GOMEMLIMIT=%s from the kernel command line", os.Getenv("GOMEMLIMIT"))
		return
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		con.Warn("PID 1 memory limit not set: sysinfo: %v", err)
		return
	}
	total := uint64(si.Totalram) * uint64(si.Unit)
	limit := pid1MemoryLimit(total)
	debug.SetMemoryLimit(limit)
	con.Stage("PID 1 memory limit: %d MiB (soft; the machine has %d MiB)", limit>>20, total>>20)
}

// pid1MemoryLimit is 1/16 of the machine's memory, at least 64 MiB and at
// most 256 MiB.
func pid1MemoryLimit(total uint64) int64 {
	return int64(min(max(total/memLimitShare, memLimitMin), memLimitMax))
}
