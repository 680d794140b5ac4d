package pxe

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"

	"kiln/configs/node"
	"kiln/internal/testutil/netns"
)

// The DHCP tests run the server and its clients in two network
// namespaces the test creates, joined by veth pairs: nothing is sent on
// the host's interfaces.
//
//	namespace A (server)            namespace B (clients)
//	veth-a 10.77.0.1/24  <------->  veth-b (10.77.0.50/24 for unicast tests)
//	veth-c 10.78.0.1/24  <------->  veth-d   (the server must not answer here)

var nsCounter atomic.Int32

type testNet struct {
	a, b *netns.NS
}

func newTestNet(t *testing.T) *testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2) to run the server in a namespace")
	}
	n := nsCounter.Add(1)
	tn := &testNet{
		a: netns.New(t, fmt.Sprintf("kiln-pxe-%d-%d-a", os.Getpid(), n)),
		b: netns.New(t, fmt.Sprintf("kiln-pxe-%d-%d-b", os.Getpid(), n)),
	}
	// The links are created inside A, their peers moved into B: they
	// never exist in the host's namespace.
	tn.a.Veth(t, "veth-a", tn.b, "veth-b")
	tn.a.Veth(t, "veth-c", tn.b, "veth-d")
	tn.a.Addr(t, "veth-a", "10.77.0.1/24")
	tn.a.Addr(t, "veth-c", "10.78.0.1/24")
	tn.a.Up(t, "veth-a", "veth-c")
	tn.b.Up(t, "veth-b", "veth-d")
	return tn
}

// helperConfig is the configuration of a server run by helperServer.
type helperConfig struct {
	DHCP                         DHCPMode
	RangeStart, RangeEnd, Router string
	DNS                          []string
	LeaseTime                    time.Duration
	Machines                     string
	Images                       []string
	IPXEDir                      string
}

const helperEnv = "KILN_PXE_TEST_SERVER"

func TestMain(m *testing.M) {
	if p := os.Getenv(helperEnv); p != "" {
		os.Exit(helperServer(p))
	}
	os.Exit(m.Run())
}

// helperServer is the test binary run by startNetServer inside namespace
// A: a whole server process in the namespace, as "ip netns exec NS kiln
// pxe serve" runs. (In-process, only the goroutine that switched
// namespaces is in it: the TFTP server's per-transfer sockets, made later
// on other threads, would be in the host's namespace.) It logs to stderr,
// prints READY once listening, and stops when stdin closes.
func helperServer(path string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fail(err)
	}
	var hc helperConfig
	if err := json.Unmarshal(data, &hc); err != nil {
		return fail(err)
	}
	cfg := Config{
		Interface: "veth-a", DHCP: hc.DHCP, LeaseTime: hc.LeaseTime, IPXEDir: hc.IPXEDir,
		HTTPPort: DefaultHTTPPort, TFTPPort: DefaultTFTPPort, AllowMasterImage: true, SecretsKey: fixedSecretsKey(),
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	parse := func(s string) netip.Addr {
		a, _ := netip.ParseAddr(s)
		return a
	}
	cfg.RangeStart, cfg.RangeEnd, cfg.Router = parse(hc.RangeStart), parse(hc.RangeEnd), parse(hc.Router)
	for _, d := range hc.DNS {
		cfg.DNS = append(cfg.DNS, parse(d))
	}
	if hc.Machines != "" {
		if cfg.Machines, err = ParseMachines("machines.yaml", []byte(hc.Machines)); err != nil {
			return fail(err)
		}
	}
	for _, dir := range hc.Images {
		img, err := LoadImage(dir)
		if err != nil {
			return fail(err)
		}
		cfg.Images = append(cfg.Images, img)
	}
	s, err := New(cfg)
	if err != nil {
		return fail(err)
	}
	if err := s.Start(); err != nil {
		return fail(err)
	}
	fmt.Println("READY", s.BaseURL())
	io.Copy(io.Discard, os.Stdin)
	s.Close()
	return 0
}

// startNetServer runs a server on veth-a in namespace A, on the standard
// ports (the namespace is the test's own), as a child process.
func startNetServer(t *testing.T, tn *testNet, hc helperConfig) *logBuffer {
	t.Helper()
	logs := &logBuffer{}
	if hc.IPXEDir == "" {
		hc.IPXEDir = fakeIPXEDir(t)
	}
	if hc.Images == nil {
		hc.Images = []string{fakeImage(t, node.RoleMaster).Dir, fakeImage(t, node.RoleWorker).Dir}
	}
	data, _ := json.Marshal(hc)
	cfgPath := filepath.Join(t.TempDir(), "helper.json")
	if err := os.WriteFile(cfgPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := tn.a.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"="+cfgPath)
	cmd.Stderr = logs
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				ready <- sc.Text()
			}
		}
		close(ready)
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	select {
	case line, ok := <-ready:
		if !ok {
			t.Fatalf("the server did not start:\n%s", logs.String())
		}
		t.Logf("server in %s: %s", tn.a.Name, line)
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not start in time:\n%s", logs.String())
	}
	return logs
}

// dhcpClient is nclient4 on an interface of namespace B, as the machine
// with the MAC address.
func dhcpClient(t *testing.T, tn *testNet, ifname, macText string, timeout time.Duration) *nclient4.Client {
	t.Helper()
	var c *nclient4.Client
	err := tn.b.Do(func() error {
		var err error
		c, err = nclient4.New(ifname, nclient4.WithHWAddr(mac(t, macText)), nclient4.WithTimeout(timeout), nclient4.WithRetry(2))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Client kinds, as DHCP options.
var (
	pxeBIOS = []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
	}
	pxeUEFI = []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}),
	}
	pxeARM = []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00011:UNDI:003000")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_ARM64)),
	}
	// iPXE sends its user class as a bare string.
	ipxeClient = []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithUserClass("iPXE", false),
	}
)

func discover(t *testing.T, c *nclient4.Client, mods ...dhcpv4.Modifier) (*dhcpv4.DHCPv4, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.DiscoverOffer(ctx, mods...)
}

func expectNoAnswer(t *testing.T, what string, c *nclient4.Client, mods ...dhcpv4.Modifier) {
	t.Helper()
	if offer, err := discover(t, c, mods...); !errors.Is(err, nclient4.ErrNoResponse) {
		t.Errorf("%s: want no answer, got %v %v", what, offer, err)
	}
}

// netMachines are the machines of the namespace tests: the master has a
// static address in veth-a's network.
const netMachines = `machines:
  52:54:00:12:34:56: {role: master, hostname: master-1, address: 10.77.0.10/24}
  52:54:00:00:00:02: {role: worker, hostname: worker-1}
default: refuse
`

func TestProxyDHCP(t *testing.T) {
	tn := newTestNet(t)
	logs := startNetServer(t, tn, helperConfig{DHCP: DHCPProxy, Machines: netMachines})
	server := net.IPv4(10, 77, 0, 1)

	check := func(name string, offer *dhcpv4.DHCPv4, err error, file string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !offer.YourIPAddr.IsUnspecified() {
			t.Errorf("%s: proxyDHCP offered an address: %v", name, offer.YourIPAddr)
		}
		if offer.BootFileName != file || !offer.ServerIPAddr.Equal(server) || !offer.ServerIdentifier().Equal(server) ||
			offer.ClassIdentifier() != "PXEClient" || offer.MessageType() != dhcpv4.MessageTypeOffer {
			t.Errorf("%s: %s", name, offer.Summary())
		}
		if opt43 := offer.Options.Get(dhcpv4.OptionVendorSpecificInformation); string(opt43) != string(pxeVendorOptions) {
			t.Errorf("%s: option 43 %x", name, opt43)
		}
	}
	master := dhcpClient(t, tn, "veth-b", "52:54:00:12:34:56", time.Second)
	offer, err := discover(t, master, pxeBIOS...)
	check("BIOS", offer, err, BIOSBootFile)
	offer, err = discover(t, master, pxeUEFI...)
	check("UEFI", offer, err, UEFIBootFile)
	if len(offer.Options.Get(dhcpv4.OptionClientMachineIdentifier)) != 17 {
		t.Error("UEFI: client machine identifier not echoed")
	}
	offer, err = discover(t, master, ipxeClient...)
	check("iPXE", offer, err, "http://10.77.0.1:8080/ipxe/52-54-00-12-34-56")
	logs.waitLog(t, "msg=dhcp", "mac=52:54:00:12:34:56", "type=DISCOVER", "reply=OFFER", "file=undionly.kpxe", "host=master-1")

	quick := dhcpClient(t, tn, "veth-b", "52:54:00:12:34:56", 300*time.Millisecond)
	// proxyDHCP leaves non-PXE clients to the network's DHCP server.
	expectNoAnswer(t, "plain DHCP client", quick)
	// An ARM64 client has no boot file here.
	expectNoAnswer(t, "ARM64", quick, pxeARM...)
	logs.waitLog(t, "no answer", "not supported")
	// Unknown MAC, default refuse: no answer, logged.
	stranger := dhcpClient(t, tn, "veth-b", "02:00:00:00:00:99", 300*time.Millisecond)
	expectNoAnswer(t, "unknown MAC", stranger, pxeBIOS...)
	logs.waitLog(t, "refused", "mac=02:00:00:00:00:99")
	// The server hears only its interface: veth-c is in the same
	// namespace, up and addressed, and gets nothing.
	other := dhcpClient(t, tn, "veth-d", "52:54:00:12:34:56", 300*time.Millisecond)
	expectNoAnswer(t, "on another interface", other, pxeBIOS...)

	// Port 4011: the PXE client, now with an address from the network's
	// DHCP server, asks the proxy directly.
	tn.b.Addr(t, "veth-b", "10.77.0.50/24")
	req, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithHwAddr(mac(t, "52:54:00:00:00:02")),
		dhcpv4.WithClientIP(net.IPv4(10, 77, 0, 50)), pxeUEFI[0], pxeUEFI[1])
	resp := udpExchange(t, tn, "10.77.0.1:4011", req.ToBytes(), time.Second)
	if resp == nil {
		t.Fatal("no answer on port 4011")
	}
	ack, err := dhcpv4.FromBytes(resp)
	if err != nil || ack.MessageType() != dhcpv4.MessageTypeAck || ack.BootFileName != UEFIBootFile ||
		!ack.YourIPAddr.IsUnspecified() || ack.TransactionID != req.TransactionID {
		t.Errorf("port 4011: %v %v", ack, err)
	}
	logs.waitLog(t, "msg=dhcp", "port=4011", "mac=52:54:00:00:00:02", "reply=ACK")
	// ... and the server now knows its address for the logs of TFTP
	// and HTTP.
	if code, _ := netnsHTTP(t, tn)("http://10.77.0.1:8080/images/worker/vmlinuz"); code != 200 {
		t.Errorf("kernel: %d", code)
	}
	logs.waitLog(t, "msg=http", "client=10.77.0.50", "mac=52:54:00:00:00:02", "path=/images/worker/vmlinuz", "bytes=100000")
	// ... and nothing of the master's, over HTTP or TFTP.
	if code, _ := netnsHTTP(t, tn)("http://10.77.0.1:8080/images/master/initramfs.img"); code != 403 {
		t.Errorf("the master's initramfs to a worker: %d", code)
	}
	logs.waitLog(t, "level=WARN", "msg=http", "client=10.77.0.50", "mac=52:54:00:00:00:02", "path=/images/master/initramfs.img", "status=403", "refused")
	if tftp, err := exec.LookPath("tftp"); err == nil {
		out := filepath.Join(t.TempDir(), "initramfs.img")
		b, _ := tn.b.Command(tftp, "-m", "binary", "10.77.0.1", "-c", "get", "images/master/initramfs.img", out).CombinedOutput()
		if !strings.Contains(strings.ToLower(string(b)), "access violation") {
			t.Errorf("tftp the master's initramfs to a worker: %s", b)
		}
		logs.waitLog(t, "level=WARN", "msg=tftp", "client=10.77.0.50", "mac=52:54:00:00:00:02", "file=images/master/initramfs.img", "refused")
	}
	testMalformed(t, tn, logs)
	// Still answering.
	offer, err = discover(t, master, pxeBIOS...)
	check("after the malformed packets", offer, err, BIOSBootFile)
}

// udpExchange sends a packet from namespace B and waits for one answer
// (nil on timeout).
func udpExchange(t *testing.T, tn *testNet, to string, pkt []byte, timeout time.Duration) []byte {
	t.Helper()
	var conn *net.UDPConn
	if err := tn.b.Do(func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 77, 0, 50)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst, _ := net.ResolveUDPAddr("udp4", to)
	if _, err := conn.WriteTo(pkt, dst); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 4096)
	n, _, err := conn.ReadFrom(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// testMalformed sends broken packets to both DHCP ports (veth-b must have
// 10.77.0.50).
func testMalformed(t *testing.T, tn *testNet, logs *logBuffer) {
	t.Helper()
	valid, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithHwAddr(mac(t, "52:54:00:12:34:56")), pxeBIOS[0], pxeBIOS[1])
	good := valid.ToBytes()
	badOption := append([]byte(nil), good[:240]...)
	badOption = append(badOption, 60, 200, 'P', 'X', 'E') // option longer than the packet
	noCookie := append([]byte(nil), good...)
	copy(noCookie[236:240], "junk")
	reply := append([]byte(nil), good...)
	reply[0] = 2 // BOOTREPLY
	longHW := append([]byte(nil), good...)
	longHW[2] = 200 // hardware address length
	tokenRing := append([]byte(nil), good...)
	tokenRing[1] = 6
	noType, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(t, "52:54:00:12:34:56")))
	noType.Options.Del(dhcpv4.OptionDHCPMessageType)
	huge := make([]byte, 9000)
	copy(huge, good)
	for _, port := range []string{"67", "4011"} {
		for name, pkt := range map[string][]byte{
			"empty": {}, "one byte": {1}, "garbage": []byte("GET / HTTP/1.0\r\n\r\n"), "truncated": good[:100],
			"header only": good[:240], "bad option": badOption, "no cookie": noCookie, "reply": reply,
			"long hardware address": longHW, "token ring": tokenRing, "BOOTP": noType.ToBytes(), "huge": huge,
		} {
			if resp := udpExchange(t, tn, "10.77.0.1:"+port, pkt, 50*time.Millisecond); resp != nil {
				t.Errorf("port %s, %s: answered %d bytes", port, name, len(resp))
			}
		}
	}
}

func TestFullDHCP(t *testing.T) {
	tn := newTestNet(t)
	logs := startNetServer(t, tn, helperConfig{
		DHCP:       DHCPFull,
		RangeStart: "10.77.0.100",
		RangeEnd:   "10.77.0.110",
		Router:     "10.77.0.254",
		DNS:        []string{"10.77.0.53"},
		LeaseTime:  10 * time.Minute,
		Machines:   netMachines,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// A listed worker (DHCP) gets an address from the range, with the
	// network's options, and keeps it.
	worker := dhcpClient(t, tn, "veth-b", "52:54:00:00:00:02", time.Second)
	lease, err := worker.Request(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ack := lease.ACK
	got := ipOf(ack.YourIPAddr)
	if got.Less(netip.MustParseAddr("10.77.0.100")) || netip.MustParseAddr("10.77.0.110").Less(got) {
		t.Errorf("address %s outside the range", got)
	}
	ones, _ := ack.SubnetMask().Size()
	if ones != 24 || len(ack.Router()) != 1 || !ack.Router()[0].Equal(net.IPv4(10, 77, 0, 254)) ||
		len(ack.DNS()) != 1 || ack.HostName() != "worker-1" || ack.IPAddressLeaseTime(0) != 10*time.Minute ||
		!ack.ServerIdentifier().Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("ack: %s", ack.Summary())
	}
	if ack.BootFileName != "" {
		t.Errorf("a plain DHCP client got boot file %q", ack.BootFileName)
	}
	again, err := worker.Request(ctx)
	if err != nil || !again.ACK.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Errorf("second request: %v %v, want %s", again, err, got)
	}
	logs.waitLog(t, "msg=dhcp", "mac=52:54:00:00:00:02", "type=REQUEST", "reply=ACK", "ip="+got.String())

	// The same machine booting with iPXE: the same address, and the
	// script's URL.
	ipxe := dhcpClient(t, tn, "veth-b", "52:54:00:00:00:02", time.Second)
	lease, err = ipxe.Request(ctx, ipxeClient...)
	if err != nil {
		t.Fatal(err)
	}
	if !lease.ACK.YourIPAddr.Equal(ack.YourIPAddr) || lease.ACK.BootFileName != "http://10.77.0.1:8080/ipxe/52-54-00-00-00-02" {
		t.Errorf("iPXE: %s", lease.ACK.Summary())
	}
	// A PXE ROM: the iPXE binary over TFTP.
	lease, err = ipxe.Request(ctx, pxeUEFI...)
	if err != nil || lease.ACK.BootFileName != UEFIBootFile || !lease.ACK.ServerIPAddr.Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("UEFI: %v %v", lease, err)
	}

	// The master has a static address in the network: DHCP gives it.
	master := dhcpClient(t, tn, "veth-b", "52:54:00:12:34:56", time.Second)
	lease, err = master.Request(ctx, pxeBIOS...)
	if err != nil || !lease.ACK.YourIPAddr.Equal(net.IPv4(10, 77, 0, 10)) || lease.ACK.BootFileName != BIOSBootFile {
		t.Errorf("master: %v %v", lease, err)
	}

	// Unknown MAC, default refuse: no answer.
	stranger := dhcpClient(t, tn, "veth-b", "02:00:00:00:00:99", 300*time.Millisecond)
	expectNoAnswer(t, "unknown MAC", stranger)
	expectNoAnswer(t, "unknown MAC, PXE", stranger, pxeBIOS...)
	logs.waitLog(t, "refused", "mac=02:00:00:00:00:99")
	// Nothing on the other interface.
	other := dhcpClient(t, tn, "veth-d", "52:54:00:00:00:02", 300*time.Millisecond)
	expectNoAnswer(t, "on another interface", other)

	// A request for an address that is not the client's is refused.
	nak, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithHwAddr(mac(t, "52:54:00:00:00:02")),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 10))), dhcpv4.WithBroadcast(true))
	if resp := nakExchange(t, tn, nak); resp == nil || resp.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("request for the master's address: %v", resp)
	}

	tn.b.Addr(t, "veth-b", "10.77.0.50/24")
	testMalformed(t, tn, logs)
	if _, err := worker.Request(ctx); err != nil {
		t.Errorf("after the malformed packets: %v", err)
	}

	// From namespace B, as the booted machine would: the script over
	// HTTP, the kernel, the config; the iPXE binary over TFTP.
	testFetches(t, tn, logs)
}

// nakExchange sends a request from veth-b with nclient4's raw socket and
// returns the first answer.
func nakExchange(t *testing.T, tn *testNet, req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	t.Helper()
	c := dhcpClient(t, tn, "veth-b", req.ClientHWAddr.String(), time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.SendAndRead(ctx, c.RemoteAddr(), req, nil)
	if err != nil {
		return nil
	}
	return resp
}

// netnsHTTP returns a GET function whose connections are made in
// namespace B.
func netnsHTTP(t *testing.T, tn *testNet) func(url string) (int, string) {
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := tn.b.Do(func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	return func(url string) (int, string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

func testFetches(t *testing.T, tn *testNet, logs *logBuffer) {
	t.Helper()
	fetch := netnsHTTP(t, tn)
	code, script := fetch("http://10.77.0.1:8080/ipxe/52-54-00-00-00-02")
	if code != 200 || !strings.Contains(script, "kernel http://10.77.0.1:8080/images/worker/vmlinuz ") ||
		!strings.Contains(script, "kiln.config=http://10.77.0.1:8080/config/52-54-00-00-00-02.yaml") {
		t.Errorf("script %d:\n%s", code, script)
	}
	if code, body := fetch("http://10.77.0.1:8080/images/worker/vmlinuz"); code != 200 || len(body) != 100_000 {
		t.Errorf("kernel: %d, %d bytes", code, len(body))
	}
	if code, body := fetch("http://10.77.0.1:8080/config/52-54-00-00-00-02.yaml"); code != 200 || !strings.Contains(body, "hostname: worker-1") {
		t.Errorf("config %d:\n%s", code, body)
	}
	if tftp, err := exec.LookPath("tftp"); err == nil {
		out := filepath.Join(t.TempDir(), "undionly.kpxe")
		b, err := tn.b.Command(tftp, "-m", "binary", "10.77.0.1", "-c", "get", BIOSBootFile, out).CombinedOutput()
		if fi, serr := os.Stat(out); err != nil || serr != nil || fi.Size() != 70_000 {
			t.Errorf("tftp from namespace B: %v %s", err, b)
		}
		logs.waitLog(t, "msg=tftp", "client=10.77.0.50", "mac=52:54:00:00:00:02", "file=undionly.kpxe", "bytes=70000")
	}
}
