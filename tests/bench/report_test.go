//go:build bench

package bench

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"

	"kiln/qemu"
)

// The report: every test adds its tables here, and TestMain prints them
// all at the end as one block, so that `make bench` ends with the figures
// and not with test chatter.

// Where a table goes in the report.
const (
	rankHost = iota
	rankImages
	rankFloor
	rankTimeline
	rankVersusFloor
	rankMemory
)

type table struct {
	rank   int
	Title  string
	Notes  []string
	Header []string
	Rows   [][]string
}

var report struct {
	mu      sync.Mutex
	started time.Time
	load0   string
	tables  []table
	// The figures the comparison with the floors needs.
	floor floorFigures
	nodes []nodeFigures
}

// floorFigures are the floors measured in this run.
type floorFigures struct {
	KernelFirst []time.Duration // QEMU start → kernel's first console line, each run
	InitFirst   []time.Duration // QEMU start → the trivial init's first line, each run
	HostReadyz  time.Duration   // host: kiln-node up → /readyz, first start on empty data
	HostNote    string
	VMNote      string
}

// nodeFigures are one VM node's boot figures.
type nodeFigures struct {
	Name, Role  string
	bootFigures // from the console
	Ready       time.Duration
	APIReadyz   time.Duration // the API's /readyz answered the host (master)
	UpToAPI     float64       // guest clock: "up:" → "kube-apiserver ready" (master); -1 unknown
}

func addTable(t table) {
	report.mu.Lock()
	defer report.mu.Unlock()
	report.tables = append(report.tables, t)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// printReport writes the whole report.
func printReport(w io.Writer) {
	report.mu.Lock()
	defer report.mu.Unlock()
	tables := append([]table(nil), report.tables...)
	if vs, ok := versusFloor(); ok {
		tables = append(tables, vs)
	}
	if len(tables) == 0 {
		return
	}
	sort.SliceStable(tables, func(i, j int) bool { return tables[i].rank < tables[j].rank })
	accel := "TCG (no usable /dev/kvm)"
	if qemu.KVMUsable() {
		accel = "KVM"
	}
	fmt.Fprintf(w, "\n==================== kiln bench ====================\n")
	fmt.Fprintf(w, "%s, %d CPUs, QEMU %s; load average %s at the start, %s at the end; %s in all\n",
		report.started.Format("2006-01-02 15:04 MST"), runtime.NumCPU(), accel, report.load0, loadavg(),
		time.Since(report.started).Round(time.Second))
	fmt.Fprintf(w, "MB = 10^6 bytes (files), MiB = 2^20 bytes (memory); s = seconds\n")
	for _, t := range tables {
		t.render(w)
	}
	fmt.Fprintf(w, "\n====================================================\n")
}

// render prints a table in Markdown, padded so that it reads as well in a
// terminal as in an issue. Numeric columns are right-aligned.
func (t table) render(w io.Writer) {
	fmt.Fprintf(w, "\n### %s\n", t.Title)
	for _, n := range t.Notes {
		fmt.Fprintf(w, "%s\n", n)
	}
	if len(t.Rows) == 0 {
		fmt.Fprintf(w, "(nothing measured)\n")
		return
	}
	fmt.Fprintln(w)
	cols := len(t.Header)
	width := make([]int, cols)
	numeric := make([]bool, cols)
	for i := range numeric {
		numeric[i] = true
	}
	for i, h := range t.Header {
		width[i] = runeLen(h)
	}
	for _, r := range t.Rows {
		for i := 0; i < cols; i++ {
			c := cell(r, i)
			width[i] = max(width[i], runeLen(c))
			if c != "" && c != "n/a" && c != "-" && !unicode.IsDigit([]rune(c)[0]) {
				numeric[i] = false
			}
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i := 0; i < cols; i++ {
			c := cell(cells, i)
			pad := strings.Repeat(" ", width[i]-runeLen(c))
			if numeric[i] {
				b.WriteString(" " + pad + c + " |")
			} else {
				b.WriteString(" " + c + pad + " |")
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(t.Header)
	var sep strings.Builder
	sep.WriteString("|")
	for i := 0; i < cols; i++ {
		if numeric[i] {
			sep.WriteString(strings.Repeat("-", width[i]+1) + ":|")
		} else {
			sep.WriteString(strings.Repeat("-", width[i]+2) + "|")
		}
	}
	fmt.Fprintln(w, sep.String())
	for _, r := range t.Rows {
		line(r)
	}
}

func cell(r []string, i int) string {
	if i < len(r) {
		return r[i]
	}
	return ""
}

func runeLen(s string) int { return len([]rune(s)) }

// median of the durations measured (0 when none).
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func durList(ds []time.Duration) string {
	var p []string
	for _, d := range ds {
		p = append(p, fmt.Sprintf("%.1f", d.Seconds()))
	}
	return strings.Join(p, ", ")
}

// versusFloor is the table of each boot figure beside its floor. Called
// with report.mu held.
func versusFloor() (table, bool) {
	fl := report.floor
	if len(report.nodes) == 0 {
		return table{}, false
	}
	kFirst, iFirst := median(fl.KernelFirst), median(fl.InitFirst)
	t := table{rank: rankVersusFloor, Title: "Boot figures beside their floors",
		Header: []string{"figure", "measured", "floor", "floor is", "ratio"}}
	if len(fl.InitFirst) > 0 {
		t.Notes = append(t.Notes, fmt.Sprintf("kernel floor: the same kernel and command line booting a trivial init (images/builder/testdata/testinit), %s; median of %d boots (%s s to the init's first line).",
			fl.VMNote, len(fl.InitFirst), durList(fl.InitFirst)))
	} else {
		t.Notes = append(t.Notes, "kernel floor: not measured (TestBenchFloor did not run).")
	}
	if fl.HostReadyz > 0 {
		t.Notes = append(t.Notes, "host floor: "+fl.HostNote+".")
	} else {
		t.Notes = append(t.Notes, "host floor: not measured (neither TestBench nor TestBenchFloor ran).")
	}
	t.Notes = append(t.Notes, "measured: seconds since the node's QEMU start as the host saw them (console line arrival; the API polled every second); "+
		"\"up:\" → \"kube-apiserver ready\" is on the guest's clock (the two console lines' stamps). ratio: measured / floor.")
	ratio := func(m, f time.Duration) string {
		if m <= 0 || f <= 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.1f×", m.Seconds()/f.Seconds())
	}
	add := func(what string, m, f time.Duration, floorIs string) {
		t.Rows = append(t.Rows, []string{what, secs(m), secs(f), floorIs, ratio(m, f)})
	}
	for _, n := range report.nodes {
		add(n.Name+": QEMU start → kernel's first console line", n.KernelFirst, kFirst, "kernel floor, same point")
		add(n.Name+": QEMU start → PID 1's first line", n.PID1First, iFirst, "kernel floor: trivial init's first line")
		if n.UpToAPI >= 0 {
			add(n.Name+": PID 1 \"up:\" → \"kube-apiserver ready\" (guest clock)", time.Duration(n.UpToAPI*float64(time.Second)), fl.HostReadyz, "host floor")
		}
		if n.APIReadyz > 0 {
			f := time.Duration(0)
			if iFirst > 0 && fl.HostReadyz > 0 {
				f = iFirst + fl.HostReadyz
			}
			add(n.Name+": QEMU start → API /readyz ok from the host", n.APIReadyz, f, "kernel floor + host floor")
		}
		add(n.Name+": QEMU start → node Ready", n.Ready, iFirst, "kernel floor: trivial init's first line")
	}
	return t, true
}
