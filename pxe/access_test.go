package pxe

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"kiln/configs/node"
	"kiln/pxe/tftp"
)

// The clients of TestWhoGetsWhat: loopback addresses the server attributes
// to MAC addresses as DHCP would have shown them.
var (
	clientNone    = netip.MustParseAddr("127.0.0.2") // no MAC address known
	clientUnknown = netip.MustParseAddr("127.0.0.3") // a MAC address the file does not list
	clientWorker  = netip.MustParseAddr("127.0.0.4") // worker-1
	clientMaster  = netip.MustParseAddr("127.0.0.5") // master-1
)

// httpFrom gets url over a connection from the source address src.
func httpFrom(t *testing.T, src netip.Addr, url string) (int, []byte) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       (&net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}).DialContext,
	}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// tftpError is an error packet from the server.
type tftpError struct {
	Code    uint16
	Message string
}

// tftpFrom reads file over TFTP (octet, 512-byte blocks) from the source
// address src. It returns the file, or the server's error packet.
func tftpFrom(t *testing.T, src netip.Addr, server netip.AddrPort, file string) ([]byte, *tftpError) {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: src.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rrq := append(append([]byte{0, 1}, file...), 0)
	rrq = append(append(rrq, "octet"...), 0)
	if _, err := conn.WriteToUDPAddrPort(rrq, server); err != nil {
		t.Fatal(err)
	}
	var data []byte
	buf := make([]byte, 1024)
	want := uint16(1)
	for {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("tftp %s from %s: %v", file, src, err)
		}
		if n < 4 {
			t.Fatalf("tftp %s: a %d-byte packet", file, n)
		}
		switch binary.BigEndian.Uint16(buf) {
		case 5: // ERROR
			return nil, &tftpError{Code: binary.BigEndian.Uint16(buf[2:]), Message: string(bytes.TrimRight(buf[4:n], "\x00"))}
		case 3: // DATA
		default:
			t.Fatalf("tftp %s: opcode %d", file, binary.BigEndian.Uint16(buf))
		}
		block := binary.BigEndian.Uint16(buf[2:])
		if block == want {
			data = append(data, buf[4:n]...)
			want++
		}
		conn.WriteToUDPAddrPort([]byte{0, 4, byte(block >> 8), byte(block)}, from)
		if n-4 < 512 {
			return data, nil
		}
	}
}

// TestWhoGetsWhat: each machine gets its own role's boot files, over HTTP
// and TFTP, and its own config; an unknown machine, a machine of another
// role and a client whose MAC address the server does not know get 403
// (TFTP: access violation), each logged once with the address, the MAC
// address and the file.
func TestWhoGetsWhat(t *testing.T) {
	logs := &logBuffer{}
	master, worker := fakeImage(t, node.RoleMaster), fakeImage(t, node.RoleWorker)
	s, err := New(Config{ServerIP: netip.MustParseAddr("127.0.0.1"), DHCP: DHCPOff, Images: []*Image{master, worker},
		Machines: mustMachines(t, testMachines), AllowMasterImage: true, IPXEDir: fakeIPXEDir(t), Log: logs.logger(), SecretsKey: fixedSecretsKey()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.noteClient(clientUnknown, mac(t, "02:00:00:00:00:99"))
	s.noteClient(clientWorker, mac(t, "52:54:00:00:00:02"))
	s.noteClient(clientMaster, mac(t, "52:54:00:12:34:56"))

	files := map[node.Role]map[string]string{
		node.RoleMaster: {kernelFile: master.Kernel, initramfsFile: master.Initramfs},
		node.RoleWorker: {kernelFile: worker.Kernel, initramfsFile: worker.Initramfs},
	}
	may := map[netip.Addr]node.Role{clientWorker: node.RoleWorker, clientMaster: node.RoleMaster}
	for _, c := range []netip.Addr{clientNone, clientUnknown, clientWorker, clientMaster} {
		for role, byName := range files {
			for name, path := range byName {
				want, _ := os.ReadFile(path)
				file := "images/" + string(role) + "/" + name
				code, body := httpFrom(t, c, s.BaseURL()+"/"+file)
				got, terr := tftpFrom(t, c, s.TFTPAddr(), file)
				if may[c] == role {
					if code != 200 || !bytes.Equal(body, want) {
						t.Errorf("http %s to %s: %d, %d bytes", file, c, code, len(body))
					}
					if terr != nil || !bytes.Equal(got, want) {
						t.Errorf("tftp %s to %s: %v, %d bytes", file, c, terr, len(got))
					}
					continue
				}
				if code != 403 || bytes.Contains(body, want[:64]) {
					t.Errorf("http %s to %s: %d, want 403", file, c, code)
				}
				if terr == nil || terr.Code != tftp.ErrAccess || got != nil {
					t.Errorf("tftp %s to %s: %v, %d bytes, want an access violation", file, c, terr, len(got))
				}
			}
		}
	}

	// One warning per refusal, naming the client, its MAC address and
	// the file, and why.
	for _, want := range [][]string{
		{"msg=http", "client=127.0.0.2", `mac=""`, "path=/images/master/initramfs.img", "status=403", "refused: no MAC address known for 127.0.0.2"},
		{"msg=http", "client=127.0.0.3", "mac=02:00:00:00:00:99", "path=/images/master/initramfs.img", "status=403", "is not in machines.yaml"},
		{"msg=http", "client=127.0.0.4", "mac=52:54:00:00:00:02", "path=/images/master/vmlinuz", "status=403", "worker-1) boots the worker image, not the master image"},
		{"msg=http", "client=127.0.0.5", "mac=52:54:00:12:34:56", "path=/images/worker/initramfs.img", "status=403", "boots the master image, not the worker image"},
		{"msg=tftp", "client=127.0.0.2", `mac=""`, "file=images/master/initramfs.img", "refused: no MAC address known"},
		{"msg=tftp", "client=127.0.0.3", "mac=02:00:00:00:00:99", "file=images/master/initramfs.img", "refused: 02:00:00:00:00:99 is not in machines.yaml"},
		{"msg=tftp", "client=127.0.0.4", "mac=52:54:00:00:00:02", "file=images/master/vmlinuz", "refused: ", "not the master image"},
	} {
		line := logs.waitLog(t, want...)
		if !strings.Contains(line, "level=WARN") {
			t.Errorf("not a warning: %s", line)
		}
		n := 0
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, want[1]) && strings.Contains(l, want[3]) && strings.Contains(l, "refused") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d log lines for %s %s, want 1", n, want[1], want[3])
		}
	}

	// The iPXE binaries and the scripts are for anyone.
	if _, terr := tftpFrom(t, clientNone, s.TFTPAddr(), BIOSBootFile); terr != nil {
		t.Errorf("tftp %s to a client the server does not know: %v", BIOSBootFile, terr)
	}

	// Configs: each machine its own.
	masterCfg, workerCfg := s.BaseURL()+"/config/52-54-00-12-34-56.yaml", s.BaseURL()+"/config/52-54-00-00-00-02.yaml"
	for _, tc := range []struct {
		client netip.Addr
		url    string
		code   int
	}{
		{clientMaster, masterCfg, 200},
		{clientWorker, workerCfg, 200},
		{clientWorker, masterCfg, 403},
		{clientMaster, workerCfg, 403},
		{clientUnknown, masterCfg, 403},
		{clientUnknown, workerCfg, 403},
		{clientUnknown, s.BaseURL() + "/config/02-00-00-00-00-99.yaml", 403},
	} {
		code, body := httpFrom(t, tc.client, tc.url)
		if code != tc.code {
			t.Errorf("%s from %s: %d, want %d: %s", tc.url, tc.client, code, tc.code, body)
		}
		if code == 403 && bytes.Contains(body, []byte("hostname")) {
			t.Errorf("a refusal holds a config: %s", body)
		}
	}
	logs.waitLog(t, "client=127.0.0.4", "mac=52:54:00:00:00:02", "path=/config/52-54-00-12-34-56.yaml", "status=403",
		"the config of 52:54:00:12:34:56 goes only to that machine")

	// A request for a script does not take an address DHCP gave another
	// machine: the worker asking for the master's script still gets no
	// master file.
	if code, body := httpFrom(t, clientWorker, s.BaseURL()+"/ipxe/52-54-00-12-34-56"); code != 200 {
		t.Errorf("script: %d %s", code, body)
	}
	logs.waitLog(t, "client=127.0.0.4", "path=/ipxe/52-54-00-12-34-56", "stays 52:54:00:00:00:02's (from DHCP)")
	if code, _ := httpFrom(t, clientWorker, s.BaseURL()+"/images/master/initramfs.img"); code != 403 {
		t.Errorf("master initramfs to the worker after its script request: %d", code)
	}
	if _, terr := tftpFrom(t, clientWorker, s.TFTPAddr(), "/images/master/initramfs.img"); terr == nil || terr.Code != tftp.ErrAccess {
		t.Errorf("tftp: %v", terr)
	}

	// A client DHCP has not shown is tied to the MAC address of the
	// script it asks for (iPXE asks for its own), then gets that
	// machine's files.
	if code, _ := httpFrom(t, clientNone, s.BaseURL()+"/ipxe/52-54-00-00-00-02"); code != 200 {
		t.Errorf("script: %d", code)
	}
	if got, terr := tftpFrom(t, clientNone, s.TFTPAddr(), "images/worker/vmlinuz"); terr != nil || len(got) != 100_000 {
		t.Errorf("tftp worker kernel after the script: %v, %d bytes", terr, len(got))
	}
	if code, _ := httpFrom(t, clientNone, s.BaseURL()+"/images/master/vmlinuz"); code != 403 {
		t.Errorf("master kernel to a worker: %d", code)
	}
}
