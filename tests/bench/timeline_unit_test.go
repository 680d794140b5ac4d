//go:build bench

package bench

import (
	"strings"
	"testing"
	"time"
)

// sampleConsole is a node's console in the formats the timeline reads: the
// kernel's lines, an early init's and PID 1's stage lines, and lines of
// neither (a component's output with kiln.verbose).
const sampleConsole = `[    0.000000] Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org)
[    0.000000] Command line: console=tty0 console=ttyS0,115200 panic=-1 apparmor=0 kiln.boot=kernel
[    0.812345] Trying to unpack rootfs image as initramfs...
[    3.345678] Freeing initrd memory: 95000K
[    3.400000] Run /init as init process
kiln-init: [ 3.51s] root mounted (squashfs)
kiln: [   3.60s] PID 1 memory limit: 2400 MiB (soft; the machine has 3000 MiB)
kiln: [   3.90s] mounts done (0.12s)
kiln: [   3.91s] cgroups: cpu memory io pids for /sys/fs/cgroup/kiln and its children; PID 1 in /sys/fs/cgroup/init
kiln: [   4.90s] modules done (0.70s)
kiln: [   5.00s] up: master kiln-master, data /var/lib/kiln
etcd: {"level":"info","msg":"serving client traffic securely"}
kiln: [  12.00s] etcd ready
kiln: [  30.50s] kube-apiserver ready
kiln: [  31.00s] addons done
kiln: [  40.00s] containerd ready
kiln: [  50.00s] master ready: kubectl --kubeconfig /etc/kiln/cluster/admin.kubeconfig get nodes
`

func TestConsoleTimeline(t *testing.T) {
	start := time.Unix(1000, 0)
	var lines []stampedLine
	for i, l := range strings.Split(strings.TrimSpace(sampleConsole), "\n") {
		// Each line arrives 1.5 s after QEMU start plus its stamp, the
		// unstamped ones with the line before.
		at := start.Add(time.Duration(i) * time.Millisecond)
		if _, g, _, ok := stageLine(l); ok {
			at = start.Add(1500*time.Millisecond + time.Duration(g*float64(time.Second)))
		} else if g, _, ok := kernelLine(l); ok && g > 0 {
			at = start.Add(1500*time.Millisecond + time.Duration(g*float64(time.Second)))
		} else if i == 0 {
			at = start.Add(1900 * time.Millisecond)
		} else if len(lines) > 0 {
			at = lines[len(lines)-1].At
		}
		lines = append(lines, stampedLine{At: at, Text: l})
	}
	rows, f := consoleTimeline(start, lines)
	if f.KernelFirst != 1900*time.Millisecond {
		t.Errorf("kernel's first line at %v", f.KernelFirst)
	}
	if f.PID1First != 5010*time.Millisecond {
		t.Errorf("PID 1's first line at %v", f.PID1First)
	}
	if f.KernelZero != 1500*time.Millisecond {
		t.Errorf("kernel clock zero at %v", f.KernelZero)
	}
	up := f.guestStage(func(m string) bool { return strings.HasPrefix(m, "up: ") })
	api := f.guestStage(func(m string) bool { return m == "kube-apiserver ready" })
	if up != 5 || api != 30.5 {
		t.Errorf("up at %v, kube-apiserver ready at %v", up, api)
	}
	var whats []string
	for _, r := range rows {
		whats = append(whats, r.What)
	}
	all := strings.Join(whats, "\n")
	for _, want := range []string{"kernel: first console line (Linux version", "kernel: Freeing initrd memory: 95000K",
		"kernel: Run /init as init process", "PID 1: first line (kiln-init)", "kiln-init: root mounted (squashfs)",
		"kiln: mounts done (0.12s)", "kiln: etcd ready", "kiln: master ready: kubectl"} {
		if !strings.Contains(all, want) {
			t.Errorf("no row %q in\n%s", want, all)
		}
	}
	if strings.Contains(all, "serving client traffic") {
		t.Errorf("a component's output became a stage:\n%s", all)
	}

	con := newConsoleClock()
	con.Write([]byte(sampleConsole))
	comps, root := componentNames(con)
	var names []string
	for _, c := range comps {
		n := c.name
		if c.task {
			n += "(task)"
		}
		names = append(names, n)
	}
	if strings.Join(names, " ") != "etcd kube-apiserver addons(task) containerd" || root != "/sys/fs/cgroup/kiln" {
		t.Errorf("components %v under %s", names, root)
	}
	if id := userNetdev([]string{"qemu", "-netdev", "stream,id=net0,server=off", "-netdev", "user,id=net1,restrict=on,hostfwd=tcp:127.0.0.1:1-:6443"}); id != "net1" {
		t.Errorf("user netdev %q", id)
	}
	if total, avail := meminfo("MemTotal:        3000000 kB\nMemFree: 1 kB\nMemAvailable:    2000000 kB\n"); total != 3000000<<10 || avail != 2000000<<10 {
		t.Errorf("meminfo %d %d", total, avail)
	}
}
