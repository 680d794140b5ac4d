package supervisor

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

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
