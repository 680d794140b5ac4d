//go:build vm

package vm

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/internal/testutil/netns"
	"kiln/pxe/tftp"
	"kiln/qemu"
)

// The PXE network of TestPXEWorkers, inside network namespaces the test
// creates: a bridge with the PXE server's address, the VMs on taps, and a
// separate "router" namespace on a veth running a plain DHCP server (like
// an office network's), so that kiln's proxyDHCP has a real DHCP server
// beside it. Nothing is routed out of the namespaces.
const (
	pxeBridgeAddr = "10.121.0.1"  // kiln pxe serve
	pxeRouterAddr = "10.121.0.2"  // dnsmasq, DHCP only
	pxeMasterAddr = "10.121.0.10" // the master VM, static
	pxeMasterMAC  = "52:54:00:77:00:0a"
	pxeBIOSMAC    = "52:54:00:77:00:21"
	pxeUEFIMAC    = "52:54:00:77:00:22"
	pxeUnknownMAC = "52:54:00:77:00:99"
)

// TestPXEWorkers boots diskless workers with nothing but `kiln pxe serve`:
// QEMU's iPXE ROM (-boot n) asks DHCP, chainloads kiln's iPXE script,
// fetches the kernel and initramfs over HTTP and the node config by its
// MAC, and the node joins a master on the same L2. One worker is a BIOS
// machine with kiln in proxyDHCP mode beside a DHCP-only server; the other
// is a UEFI machine (OVMF) with kiln as the DHCP server. A machine the
// machines file does not list is refused, and malformed packets do not
// stop the server.
func TestPXEWorkers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, a bridge and taps")
	}
	for _, tool := range []string{"ip", "dnsmasq", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: make deps installs it", tool)
		}
	}
	dir := t.TempDir()
	// The cluster's endpoint is the master's address on the PXE network:
	// it is what the worker image pins and dials.
	e2e.GenCluster(t, dir, e2e.Cluster{Name: "pxetest", Endpoint: pxeMasterAddr + ":6443"})
	masterCfg := filepath.Join(dir, "pxe-master.yaml")
	os.WriteFile(masterCfg, []byte(fmt.Sprintf(`apiVersion: kiln.dev/v1alpha1
kind: NodeConfig
role: master
runPods: false
hostname: pxe-master
network:
  interface: eth0
  address: %s/24
`, pxeMasterAddr)), 0o644)
	master := buildImageConfig(t, dir, "master", masterCfg, "kernel")
	worker := buildImage(t, dir, "worker", "pxe")
	machines := filepath.Join(dir, "machines.yaml")
	os.WriteFile(machines, []byte(fmt.Sprintf(`machines:
  %s: {role: worker, hostname: pxe-bios}
  %s: {role: worker, hostname: pxe-uefi}
default: refuse
`, pxeBIOSMAC, pxeUEFIMAC)), 0o644)

	n := newPXENet(t, "tap-m", "tap-bios", "tap-uefi", "tap-unk")
	kc := filepath.Join(dir, "cluster", "admin.kubeconfig") // server: the master's address
	k := e2e.Kubectl{Kubeconfig: kc, Flags: []string{"--request-timeout=30s"}, Prefix: n.ns.Prefix()}.Run

	mvm := bootKernel(t, master, nil, qemu.WithNetNS(n.ns.Name), qemu.WithTapNet("tap-m", pxeMasterMAC),
		qemu.WithMemory(2048), qemu.WithCPUs(2))
	expect(t, mvm, "] master ready", 8*time.Minute)

	// 1. BIOS, proxyDHCP: dnsmasq hands out the address, kiln the boot file.
	dnsmasq := n.startDNSMasq(t, filepath.Join(dir, "dnsmasq"))
	srv := n.startPXE(t, "--image", worker, "--machines", machines)
	serverUp := time.Now()
	bios := n.bootPXE(t, "tap-bios", pxeBIOSMAC, false)
	expect(t, bios, "kiln.boot=pxe", 5*time.Minute)
	expect(t, bios, "] config done", 3*time.Minute)
	waitNodeReady(t, k, "pxe-bios", 15*time.Minute)
	t.Logf("FIGURE pxe: proxyDHCP, BIOS: PXE server start to node pxe-bios Ready: %s", time.Since(serverUp).Round(time.Second))
	if !strings.Contains(dnsmasq.String(), "DHCPACK(") || !strings.Contains(dnsmasq.String(), pxeBIOSMAC) {
		t.Errorf("dnsmasq gave pxe-bios no lease:\n%s", dnsmasq.String())
	}
	// The config came from the server, by MAC: the node is named by the
	// machines file.
	if !strings.Contains(bios.Console().Output(), "kiln.config=http://"+pxeBridgeAddr) {
		t.Errorf("pxe-bios did not read its config from the PXE server")
	}
	reportServed(t, srv.log.String(), pxeBIOSMAC, "proxyDHCP, BIOS")

	// Malformed packets to every port, then a real request: still served.
	n.execQuiet("bash", "-c", fmt.Sprintf("for p in 67 4011 69; do printf 'garbage\\0\\1\\2' > /dev/udp/%s/$p; done", pxeBridgeAddr))
	n.execQuiet("curl", "-s", "-o", "/dev/null", "--max-time", "5", "-X", "BREW", "http://"+pxeBridgeAddr+":8080/ipxe/%zz")
	if out, err := n.exec("curl", "-sf", "--max-time", "10", "http://"+pxeBridgeAddr+":8080/ipxe/"+strings.ReplaceAll(pxeBIOSMAC, ":", "-")); err != nil || !strings.Contains(out, "#!ipxe") {
		t.Errorf("after malformed requests the server does not serve: %v %s", err, out)
	}
	if err := srv.stop(); err != nil {
		t.Errorf("kiln pxe serve (proxyDHCP) did not stop cleanly: %v\n%s", err, srv.log.String())
	}
	dnsmasq.stop()

	// 2. UEFI, kiln as the DHCP server, and an image that joins with a
	// token of its own (kiln gen token, applied as a Secret); an unknown
	// machine boots beside it.
	tokenYAML, err := e2e.Kiln("gen", "token", "--ttl", "2h")
	if err != nil {
		t.Fatalf("kiln gen token: %v\n%s", err, tokenYAML)
	}
	token := regexp.MustCompile(`--token ([a-z0-9]{6}\.[a-z0-9]{16})`).FindStringSubmatch(tokenYAML)
	if token == nil {
		t.Fatalf("kiln gen token printed no token:\n%s", tokenYAML)
	}
	tokenFile := filepath.Join(dir, "batch-token.yaml")
	os.WriteFile(tokenFile, []byte(tokenYAML), 0o600)
	if out, err := k("apply", "-f", tokenFile); err != nil {
		t.Fatalf("kubectl apply the token: %v\n%s", err, out)
	}
	batch := filepath.Join(dir, "worker-batch")
	e2e.MustKiln(t, "build", "--role", "worker", "--node-binary", e2e.Bin(e2e.KilnNodeBin), "--cluster", filepath.Join(dir, "cluster"),
		"--format", "pxe", "--token", token[1], "--out", batch)
	srv = n.startPXE(t, "--image", batch, "--machines", machines, "--dhcp-range", "10.121.0.150-10.121.0.199")
	serverUp = time.Now()
	uefi := n.bootPXE(t, "tap-uefi", pxeUEFIMAC, true)
	unknown := n.bootPXE(t, "tap-unk", pxeUnknownMAC, false)
	expect(t, uefi, "kiln.boot=pxe", 6*time.Minute)
	expect(t, uefi, "] config done", 3*time.Minute)
	t.Logf("FIGURE pxe: full DHCP, UEFI: PXE server start to kiln init: %s", time.Since(serverUp).Round(time.Second))
	srv.log.wait(t, time.Minute, "refused", strings.ToLower(pxeUnknownMAC))
	unknown.Kill()
	if strings.Contains(unknown.Console().Output(), "kiln") {
		t.Errorf("the unknown machine booted kiln:\n%s", unknown.Console().Tail(20))
	}
	waitNodeReady(t, k, "pxe-uefi", 15*time.Minute)
	t.Logf("FIGURE pxe: full DHCP, UEFI: PXE server start to node pxe-uefi Ready: %s", time.Since(serverUp).Round(time.Second))
	// It joined with the batch token: its CSR came from that token's user.
	if out, _ := k("get", "csr", "-o", `jsonpath={range .items[*]}{.spec.username}{"\n"}{end}`); !strings.Contains(out, "system:bootstrap:"+token[1][:6]) {
		t.Errorf("no CSR from the batch token's user system:bootstrap:%s:\n%s", token[1][:6], out)
	}
	reportServed(t, srv.log.String(), pxeUEFIMAC, "full DHCP, UEFI")
	if out, _ := k("get", "nodes", "-o", "name"); strings.Contains(out, "worker-") {
		t.Errorf("a node named by default, not by the machines file: %s", out)
	}

	// Figure: the initramfs over HTTP (what iPXE fetches) and over TFTP
	// (what a plain PXE ROM would have to fetch), on loopback.
	transferFigures(t, worker)
}

// pxeNet is the test's network namespaces.
type pxeNet struct {
	ns, router *netns.NS
}

func newPXENet(t *testing.T, taps ...string) *pxeNet {
	t.Helper()
	id := strconv.Itoa(os.Getpid() % 100000)
	n := &pxeNet{ns: netns.New(t, "kiln-pxe-"+id), router: netns.New(t, "kiln-pxer-"+id)}
	n.ns.Bridge(t, "br0")
	n.ns.Addr(t, "br0", pxeBridgeAddr+"/24")
	n.ns.Up(t, "br0")
	n.ns.Veth(t, "veth-r", n.router, "eth0")
	n.ns.Master(t, "veth-r", "br0")
	n.ns.Up(t, "veth-r")
	n.router.Addr(t, "eth0", pxeRouterAddr+"/24")
	n.router.Up(t, "eth0")
	for _, tap := range taps {
		n.ns.Tap(t, tap)
		n.ns.Master(t, tap, "br0")
		n.ns.Up(t, tap)
	}
	return n
}

// exec runs a command in the PXE network's namespace.
func (n *pxeNet) exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := n.ns.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (n *pxeNet) execQuiet(args ...string) { n.exec(args...) }

// bg is a background process and its output.
type bg struct {
	cmd  *exec.Cmd
	log  *syncLog
	done chan struct{} // closed when it has exited
	err  error         // its exit, once done is closed
}

func (b *bg) String() string { return b.log.String() }

func (b *bg) stop() error {
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
		return b.err
	case <-time.After(20 * time.Second):
		b.cmd.Process.Kill()
		return fmt.Errorf("no exit 20 s after SIGTERM")
	}
}

func startBG(t *testing.T, ns *netns.NS, args ...string) *bg {
	t.Helper()
	b := &bg{log: &syncLog{}, done: make(chan struct{})}
	b.cmd = ns.Command(args[0], args[1:]...)
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.err = b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		b.cmd.Process.Kill() // after an exit: an error, ignored
		<-b.done
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", filepath.Base(args[0]), testutil.TailLines(b.log.String(), 40))
		}
	})
	return b
}

// startPXE runs kiln pxe serve on the bridge and waits until it serves.
func (n *pxeNet) startPXE(t *testing.T, args ...string) *bg {
	t.Helper()
	b := startBG(t, n.ns, append([]string{e2e.Bin(e2e.KilnBin), "pxe", "serve", "--interface", "br0"}, args...)...)
	testutil.Eventually(t, 30*time.Second, 100*time.Millisecond, "kiln pxe serve started", func() error {
		select {
		case <-b.done:
			t.Fatalf("kiln pxe serve exited: %v\n%s", b.err, b.log.String())
		default:
		}
		if !strings.Contains(b.log.String(), "Ctrl-C stops") {
			return fmt.Errorf("no \"Ctrl-C stops\" in its output:\n%s", b.log.String())
		}
		return nil
	})
	return b
}

// startDNSMasq runs a DHCP-only dnsmasq (no DNS, no PXE) in the router
// namespace.
func (n *pxeNet) startDNSMasq(t *testing.T, dir string) *bg {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	b := startBG(t, n.router, "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--log-dhcp", "--conf-file=/dev/null",
		"--port=0", "--user=root", "--interface=eth0", "--bind-interfaces", "--dhcp-authoritative",
		"--dhcp-range=10.121.0.100,10.121.0.149,255.255.255.0,1h",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"))
	testutil.Eventually(t, 10*time.Second, 100*time.Millisecond, "dnsmasq started", func() error {
		if !strings.Contains(b.log.String(), "DHCP, IP range") {
			return fmt.Errorf("no \"DHCP, IP range\" in its output:\n%s", b.log.String())
		}
		return nil
	})
	return b
}

// bootPXE boots a diskless VM on a tap of the bridge from its NIC's iPXE.
func (n *pxeNet) bootPXE(t *testing.T, tap, mac string, uefi bool) *qemu.VM {
	t.Helper()
	opts := []qemu.Option{qemu.WithNetNS(n.ns.Name), qemu.WithTapNet(tap, mac), qemu.WithBoot("n"),
		qemu.WithMemory(1536), qemu.WithCPUs(2), qemu.WithSerialLog(filepath.Join(t.TempDir(), "console.log"))}
	if uefi {
		opts = append(opts, qemu.WithOVMF())
	}
	vm, err := qemu.Start(context.Background(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("%s console (tail):\n%s", mac, vm.Console().Tail(60))
		}
	})
	return vm
}

func waitNodeReady(t *testing.T, k func(...string) (string, error), name string, d time.Duration) {
	t.Helper()
	testutil.Eventually(t, d, 3*time.Second, "node "+name+" Ready", func() error {
		out, err := k("get", "node", name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.nodeInfo.kubeletVersion}`)
		if err == nil && !strings.HasPrefix(out, "True v1.37.") {
			err = fmt.Errorf("%s", out)
		}
		return err
	})
}

// reportServed logs what the server sent one machine, from its request log.
func reportServed(t *testing.T, log, mac, what string) {
	t.Helper()
	bytesRe := regexp.MustCompile(`bytes=(\d+)`)
	var total int64
	var files []string
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(strings.ToLower(l), strings.ToLower(mac)) {
			continue
		}
		if m := bytesRe.FindStringSubmatch(l); m != nil {
			b, _ := strconv.ParseInt(m[1], 10, 64)
			total += b
			if f := regexp.MustCompile(`(?:file|path)=(\S+)`).FindStringSubmatch(l); f != nil {
				files = append(files, f[1])
			}
		}
	}
	if total == 0 {
		t.Errorf("the server's log shows nothing sent to %s:\n%s", mac, testutil.TailLines(log, 30))
		return
	}
	t.Logf("FIGURE pxe: %s: %.1f MB served to %s (%s)", what, float64(total)/1e6, mac, strings.Join(files, ", "))
}

// transferFigures times the worker's initramfs over HTTP and over kiln's
// TFTP server (blksize 1468, as PXE ROMs use), both on loopback.
func transferFigures(t *testing.T, image string) {
	t.Helper()
	pxeDir := filepath.Join(image, "pxe")
	fsys, err := tftp.DirFS(pxeDir)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ts := &tftp.Server{FS: fsys}
	go ts.Serve(conn)
	defer ts.Close()
	hsrv := httptest.NewServer(http.FileServer(http.Dir(pxeDir)))
	defer hsrv.Close()
	hs := hsrv.URL
	for _, c := range []struct{ name, url string }{
		{"HTTP", hs + "/initramfs.img"},
		{"TFTP", fmt.Sprintf("tftp://%s/initramfs.img", conn.LocalAddr())},
	} {
		start := time.Now()
		out, err := exec.Command("curl", "-sf", "--tftp-blksize", "1468", "-o", "/dev/null", "-w", "%{size_download}", c.url).CombinedOutput()
		if err != nil {
			t.Errorf("curl %s: %v %s", c.url, err, out)
			continue
		}
		size, _ := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		t.Logf("FIGURE pxe: initramfs (%.1f MB) over %s on loopback: %s", size/1e6, c.name, time.Since(start).Round(10*time.Millisecond))
	}
}

// syncLog is a process's output, safe to read while it writes.
type syncLog struct{ testutil.SyncBuffer }

// wait waits for a line holding every one of parts (case-insensitive).
func (l *syncLog) wait(t *testing.T, d time.Duration, parts ...string) {
	t.Helper()
	match := func() bool {
		for _, line := range strings.Split(strings.ToLower(l.String()), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, strings.ToLower(p))
			}
			if ok {
				return true
			}
		}
		return false
	}
	testutil.Eventually(t, d, 100*time.Millisecond, fmt.Sprintf("a log line with %q", parts), func() error {
		if !match() {
			return fmt.Errorf("none in:\n%s", testutil.TailLines(l.String(), 40))
		}
		return nil
	})
}
