// Package nodeapi is the node status API that kiln-node serves and the host
// CLI reads (kiln-node status, kiln status --node): the port, the paths,
// the wire types and the table both print. It links no Kubernetes code, so
// the host CLI may import it; the supervisor fills these types.
package nodeapi

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Port is where a node serves its status and logs to the cluster's admins
// over mutually authenticated TLS.
const Port = 10260

// Paths of the node API.
const (
	PathStatus = "/status" // GET: Status as JSON
	PathLogs   = "/logs/"  // GET PathLogs+NAME: the component's recent output as text
)

// State is where a service is in its life cycle.
type State string

const (
	StateWaiting   State = "waiting"    // dependencies not ready yet
	StateStarting  State = "starting"   // running, readiness probe not yet OK
	StateReady     State = "ready"      // running, readiness probe OK
	StateBackoff   State = "backoff"    // exited, waiting to restart
	StateCrashLoop State = "crash-loop" // exited CrashLoopAfter times in a row after short runs; still restarted, with growing delays
	StateStopping  State = "stopping"   // being stopped because the supervisor is stopping
	StateStopped   State = "stopped"    // stopped for good
	StateDone      State = "done"       // a Oneshot that exited 0; counts as ready
)

// Status is a snapshot of the whole supervisor.
type Status struct {
	Started  time.Time       `json:"started"`  // when Run began
	Services []ServiceStatus `json:"services"` // in dependency (start) order
	Timeline []Event         `json:"timeline"`
	// Boot is PID 1's stage lines (stage 1's included) with their time
	// since the kernel started: the boot's timeline up to the
	// components. Absent outside an image (kiln-node up on a host).
	Boot []BootStage `json:"boot,omitempty"`
	// Memory is the machine's, from /proc/meminfo (absent where it
	// cannot be read).
	Memory *MachineMemory `json:"memory,omitempty"`
	// VIP is the API's virtual IP on a master that competes for it
	// (controlPlane.vip), and whether this master holds it now: a client
	// that cannot reach the masters' network (kiln cluster's host) finds
	// the holder here.
	VIP *VIPStatus `json:"vip,omitempty"`
	// Image is the image the node runs and, on a disk with slots, what
	// each slot holds and how the last upgrade went (kiln upgrade).
	Image *ImageStatus `json:"image,omitempty"`
}

// VIPStatus is the virtual IP as one master sees it.
type VIPStatus struct {
	Address string `json:"address"`
	// Held: the address is on one of this node's interfaces, so this
	// master answers for it (what the network sees, not only what the
	// Lease says).
	Held bool `json:"held"`
}

// MachineMemory is what /proc/meminfo says of the whole machine.
type MachineMemory struct {
	TotalBytes     uint64 `json:"totalBytes"`
	AvailableBytes uint64 `json:"availableBytes"`
}

// ParseMeminfo reads MemTotal and MemAvailable (kB there) from the text of
// /proc/meminfo; nil when it has no MemTotal.
func ParseMeminfo(text string) *MachineMemory {
	var m MachineMemory
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			m.TotalBytes = kb << 10
		case "MemAvailable:":
			m.AvailableBytes = kb << 10
		}
	}
	if m.TotalBytes == 0 {
		return nil
	}
	return &m
}

// ServiceStatus is a snapshot of one service.
type ServiceStatus struct {
	Name       string        `json:"name"`
	State      State         `json:"state"`
	PID        int           `json:"pid,omitempty"`
	Restarts   int           `json:"restarts"`            // number of times restarted after an exit (or a failed start)
	LastExit   string        `json:"lastExit,omitempty"`  // e.g. "exit status 1", "signal: killed", or why it could not start
	LastExitAt time.Time     `json:"lastExitAt,omitzero"` // when that was
	NextStart  time.Time     `json:"nextStart,omitzero"`  // when in backoff/crash-loop
	Backoff    time.Duration `json:"backoff,omitempty"`   // current delay, when in backoff/crash-loop
	StartedAt  time.Time     `json:"startedAt,omitzero"`  // current process start, while one runs
	ReadyAt    time.Time     `json:"readyAt,omitzero"`    // first time it became ready
	// MemoryBytes is the memory charged to the service's cgroup (its
	// process and everything it started there: memory.current), when
	// the supervisor runs services in cgroups.
	MemoryBytes uint64 `json:"memoryBytes,omitempty"`
}

// BootStage is one stage line of the boot.
type BootStage struct {
	At   time.Duration `json:"at"` // since the kernel started
	What string        `json:"what"`
}

// Event is one entry of the timeline: what happened to which service, when.
type Event struct {
	At      time.Duration `json:"at"` // since Run began
	Service string        `json:"service"`
	What    string        `json:"what"` // "started", "ready", "exited: exit status 1", "restarting in 2s", "crash-loop", "stopping", "stopped", ...
}

// WriteTable prints the status as a table of components (state, pid,
// restarts, time to ready, last exit) followed by the timeline: what
// "kiln-node status" and "kiln status --node" show.
func (st Status) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tSTATE\tPID\tRESTARTS\tREADY AFTER\tMEMORY\tLAST EXIT")
	for _, s := range st.Services {
		pid, ready, last, mem := "-", "-", "-", "-"
		if s.MemoryBytes > 0 {
			mem = mib(s.MemoryBytes)
		}
		if s.PID > 0 {
			pid = fmt.Sprint(s.PID)
		}
		if !s.ReadyAt.IsZero() {
			ready = s.ReadyAt.Sub(st.Started).Round(10 * time.Millisecond).String()
		}
		if s.LastExit != "" {
			last = s.LastExit + " (" + time.Since(s.LastExitAt).Round(time.Second).String() + " ago)"
		}
		state := string(s.State)
		if !s.NextStart.IsZero() {
			state += fmt.Sprintf(" (restart in %s)", time.Until(s.NextStart).Round(100*time.Millisecond))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.Name, state, pid, s.Restarts, ready, mem, last)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nup %s\n", time.Since(st.Started).Round(time.Second))
	if m := st.Memory; m != nil {
		fmt.Fprintf(w, "memory: %s in use, %s available of %s\n", mib(m.TotalBytes-min(m.AvailableBytes, m.TotalBytes)), mib(m.AvailableBytes), mib(m.TotalBytes))
	}
	if v := st.VIP; v != nil {
		where := "held by another master (or by none)"
		if v.Held {
			where = "held by this node"
		}
		fmt.Fprintf(w, "virtual IP %s: %s\n", v.Address, where)
	}
	if im := st.Image; im != nil {
		writeImage(w, im)
	}
	if len(st.Boot) > 0 {
		fmt.Fprintln(w, "boot (since the kernel started):")
		for _, b := range st.Boot {
			fmt.Fprintf(w, "  %8.2fs  %s\n", b.At.Seconds(), b.What)
		}
	}
	if len(st.Timeline) > 0 {
		fmt.Fprintln(w, "timeline:")
		for _, e := range st.Timeline {
			fmt.Fprintf(w, "  %8.2fs  %-24s %s\n", e.At.Seconds(), e.Service, e.What)
		}
	}
}

// WriteStatus writes a status as served by Handler (GET /status: JSON) to
// w, as the JSON itself or as WriteTable's table.
func WriteStatus(w io.Writer, body []byte, output string) error {
	switch output {
	case "json":
		_, err := w.Write(body)
		return err
	case "table", "":
		var st Status
		if err := json.Unmarshal(body, &st); err != nil {
			return fmt.Errorf("decoding status: %w", err)
		}
		st.WriteTable(w)
		return nil
	}
	return fmt.Errorf("output %q: want table or json", output)
}

// mib formats bytes as MiB, the unit memory limits are given in.
func mib(b uint64) string { return fmt.Sprintf("%d MiB", b>>20) }
