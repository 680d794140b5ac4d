package tftp

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// transferLog collects the server's log records.
type transferLog struct {
	mu sync.Mutex
	ts []Transfer
}

func (l *transferLog) add(t Transfer) {
	l.mu.Lock()
	l.ts = append(l.ts, t)
	l.mu.Unlock()
}

func (l *transferLog) all() []Transfer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Transfer(nil), l.ts...)
}

// waitFor returns the first record for file, waiting for it a little: the
// server logs after the client has its last packet.
func (l *transferLog) waitFor(t *testing.T, file string) Transfer {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, tr := range l.all() {
			if tr.File == file {
				return tr
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log record for %q in %v", file, l.all())
	return Transfer{}
}

// testFiles is the served directory: name → content.
type testFiles map[string][]byte

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// startServer serves a fresh directory on a random loopback port.
func startServer(t *testing.T, configure func(*Server)) (addr netip.AddrPort, dir string, files testFiles, log *transferLog) {
	t.Helper()
	dir = t.TempDir()
	root := filepath.Join(dir, "root")
	files = testFiles{
		"hello.txt":          []byte("hello, tftp\n"),
		"empty":              nil,
		"exact512":           randomBytes(512),
		"exact1024":          randomBytes(1024),
		"big.bin":            randomBytes(3<<20 + 123),
		"text.txt":           []byte("line one\nline two\r\nbare cr\r and\n\nend"),
		"sub/dir/nested.bin": randomBytes(5000),
	}
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A secret next to the root, and links that try to reach it.
	os.WriteFile(filepath.Join(dir, "secret"), []byte("secret"), 0o644)
	os.Symlink("../secret", filepath.Join(root, "escape"))
	os.Symlink("/etc/passwd", filepath.Join(root, "passwd"))
	os.Symlink("hello.txt", filepath.Join(root, "inside-link"))

	fsys, err := DirFS(root)
	if err != nil {
		t.Fatal(err)
	}
	log = &transferLog{}
	s := &Server{FS: fsys, Log: log.add, Timeout: 200 * time.Millisecond}
	if configure != nil {
		configure(s)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(conn) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return conn.LocalAddr().(*net.UDPAddr).AddrPort(), dir, files, log
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install -y tftp-hpa curl)", name)
	}
	return p
}

// tftpHPA runs tftp-hpa's client: get file into out.
func tftpHPA(t *testing.T, addr netip.AddrPort, mode, file, out string) (string, error) {
	t.Helper()
	tftp := needTool(t, "tftp")
	args := []string{}
	if mode != "" {
		args = append(args, "-m", mode)
	}
	args = append(args, addr.Addr().String(), strconv.Itoa(int(addr.Port())), "-c", "get", file, out)
	cmd := exec.Command(tftp, args...)
	b, err := cmd.CombinedOutput()
	// tftp-hpa exits 0 even when the transfer failed: its output says.
	if err == nil && len(bytes.TrimSpace(b)) > 0 {
		err = fmt.Errorf("tftp: %s", bytes.TrimSpace(b))
	}
	return string(b), err
}

func TestTFTPHPAClient(t *testing.T) {
	needTool(t, "tftp")
	addr, dir, files, log := startServer(t, nil)
	for _, tc := range []struct{ mode, file string }{
		{"binary", "hello.txt"},
		{"binary", "empty"},
		{"binary", "exact512"},
		{"binary", "exact1024"},
		{"binary", "big.bin"},
		{"binary", "sub/dir/nested.bin"},
		{"binary", "/sub/dir/nested.bin"},
		{"binary", "inside-link"},
		{"octet", "hello.txt"},
		// tftp-hpa's default mode is netascii: it converts back, so the
		// file arrives as it is on the server.
		{"", "text.txt"},
		{"netascii", "big.bin"},
	} {
		t.Run(tc.mode+" "+tc.file, func(t *testing.T) {
			out := filepath.Join(dir, "got")
			os.Remove(out)
			if msg, err := tftpHPA(t, addr, tc.mode, tc.file, out); err != nil {
				t.Fatalf("%v\n%s", err, msg)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			want := files[strings.TrimPrefix(tc.file, "/")]
			if tc.file == "inside-link" {
				want = files["hello.txt"]
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got %d bytes, want %d (contents differ)", len(got), len(want))
			}
		})
	}
	tr := log.waitFor(t, "big.bin")
	if tr.Err != nil || tr.Bytes != int64(len(files["big.bin"])) || tr.Size != int64(len(files["big.bin"])) ||
		tr.Client.Addr() != netip.MustParseAddr("127.0.0.1") || tr.Duration <= 0 {
		t.Errorf("log record %+v", tr)
	}
	t.Logf("log: %s", tr)
}

func TestTFTPHPAErrors(t *testing.T) {
	needTool(t, "tftp")
	addr, dir, _, log := startServer(t, nil)
	for _, tc := range []struct{ file, want string }{
		{"missing", "File not found"},
		{"../secret", "Access violation"},
		{"sub/../../secret", "Access violation"},
		{"escape", "Access violation"},
		{"passwd", "Access violation"},
		{"sub", "Not a file"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			msg, err := tftpHPA(t, addr, "binary", tc.file, filepath.Join(dir, "got"))
			if err == nil || !strings.Contains(strings.ToLower(msg), strings.ToLower(tc.want)) {
				t.Errorf("get %s: %v, output %q, want %q", tc.file, err, msg, tc.want)
			}
		})
	}
	if tr := log.waitFor(t, "../secret"); tr.Err == nil || tr.Err.(*Error).Code != ErrAccess {
		t.Errorf("log %+v", tr)
	}
}

func curl(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(needTool(t, "curl"), append([]string{"-sS", "--max-time", "60"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("curl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

func TestCurlClient(t *testing.T) {
	needTool(t, "curl")
	addr, _, files, log := startServer(t, nil)
	for _, tc := range []struct {
		file    string
		blksize int // 0: curl's default (it still sends tsize and blksize 512)
	}{
		{"hello.txt", 0},
		{"empty", 0},
		{"big.bin", 0},
		{"big.bin", 1468},
		{"big.bin", 8192},
		{"exact1024", 512},
		{"exact1024", 1024},
		{"big.bin", 65464},
		{"sub/dir/nested.bin", 1428},
	} {
		t.Run(fmt.Sprintf("%s@%d", tc.file, tc.blksize), func(t *testing.T) {
			args := []string{}
			if tc.blksize > 0 {
				args = append(args, "--tftp-blksize", strconv.Itoa(tc.blksize))
			}
			got, err := curl(t, append(args, fmt.Sprintf("tftp://%s/%s", addr, tc.file))...)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, files[tc.file]) {
				t.Errorf("got %d bytes, want %d (contents differ)", len(got), len(files[tc.file]))
			}
		})
	}
	// The negotiated block size is in the log.
	found := false
	for _, tr := range log.all() {
		if tr.File == "big.bin" && tr.BlockSize == 8192 && tr.Err == nil {
			found = true
		}
	}
	if !found {
		t.Errorf("no log record of big.bin at blksize 8192: %v", log.all())
	}
	if _, err := curl(t, fmt.Sprintf("tftp://%s/missing", addr)); err == nil {
		t.Error("curl got a missing file")
	}
}

func TestConcurrentTransfers(t *testing.T) {
	addr, _, files, log := startServer(t, nil)
	needTool(t, "curl")
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		go func() {
			got, err := curl(t, "--tftp-blksize", strconv.Itoa(512+i*100), fmt.Sprintf("tftp://%s/big.bin", addr))
			if err == nil && !bytes.Equal(got, files["big.bin"]) {
				err = fmt.Errorf("transfer %d: %d bytes, contents differ", i, len(got))
			}
			errs <- err
		}()
	}
	for i := 0; i < 8; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	n := 0
	for _, tr := range log.all() {
		if tr.File == "big.bin" && tr.Err == nil {
			n++
		}
	}
	if n != 8 {
		t.Errorf("%d complete transfers logged, want 8", n)
	}
}

// TestBlockNumberRollover: with 8-byte blocks a 600 kB file needs more
// than 65535 blocks; the block number rolls over to 0.
func TestBlockNumberRollover(t *testing.T) {
	if testing.Short() {
		t.Skip("75000 round trips")
	}
	needTool(t, "curl")
	addr, dir, _, log := startServer(t, nil)
	data := randomBytes(600_000)
	os.WriteFile(filepath.Join(dir, "root", "roll.bin"), data, 0o644)
	got, err := curl(t, "--tftp-blksize", "8", fmt.Sprintf("tftp://%s/roll.bin", addr))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("got %d bytes, want %d", len(got), len(data))
	}
	t.Logf("%s", log.waitFor(t, "roll.bin"))
}

// client is a scripted TFTP client for what real clients do not do on
// purpose: lose packets, send garbage.
type client struct {
	t      *testing.T
	conn   *net.UDPConn
	server netip.AddrPort
	tid    netip.AddrPort // the transfer's port, once known
}

func newClient(t *testing.T, server netip.AddrPort) *client {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, server: server}
}

func (c *client) send(to netip.AddrPort, pkt []byte) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDPAddrPort(pkt, to); err != nil {
		c.t.Fatal(err)
	}
}

func rrq(file, mode string, opts ...string) []byte {
	b := []byte{0, 1}
	for _, f := range append([]string{file, mode}, opts...) {
		b = append(append(b, f...), 0)
	}
	return b
}

func ack(block uint16) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint16(b, opACK)
	binary.BigEndian.PutUint16(b[2:], block)
	return b
}

// recv waits for a packet; ok is false on timeout.
func (c *client) recv(timeout time.Duration) (pkt []byte, from netip.AddrPort, ok bool) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 70000)
	n, from, err := c.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, from, false
	}
	return buf[:n], from, true
}

// expectError waits for an ERROR packet and returns its code and message.
func (c *client) expectError() (uint16, string) {
	c.t.Helper()
	pkt, _, ok := c.recv(3 * time.Second)
	if !ok {
		c.t.Fatal("no answer")
	}
	op, _, err := parseReply(pkt)
	var re *RemoteError
	if op != opERROR || !errors.As(err, &re) {
		c.t.Fatalf("got opcode %d, want an ERROR", op)
	}
	return re.Code, re.Message
}

func TestMalformedRequests(t *testing.T) {
	needTool(t, "curl")
	addr, _, files, log := startServer(t, nil)
	for _, tc := range []struct {
		name string
		pkt  []byte
		code uint16
	}{
		{"one byte", []byte{1}, ErrIllegalOp},
		{"garbage", []byte("\xde\xad\xbe\xef garbage"), ErrIllegalOp},
		{"unknown opcode", []byte{0, 9, 'x', 0, 'o', 'c', 't', 'e', 't', 0}, ErrIllegalOp},
		{"data to the server port", []byte{0, 3, 0, 1, 'x'}, ErrIllegalOp},
		{"ack to the server port", ack(1), ErrIllegalOp},
		{"no NUL", []byte("\x00\x01hello.txt\x00octet"), ErrIllegalOp},
		{"no mode", []byte("\x00\x01hello.txt\x00"), ErrIllegalOp},
		{"empty name", rrq("", "octet"), ErrIllegalOp},
		{"option without value", rrq("hello.txt", "octet", "blksize"), ErrIllegalOp},
		{"write request", []byte("\x00\x02upload\x00octet\x00"), ErrAccess},
		{"mail mode", rrq("hello.txt", "mail"), ErrIllegalOp},
		{"missing file", rrq("no-such-file", "octet"), ErrFileNotFound},
		{"traversal", rrq("../secret", "octet"), ErrAccess},
		{"deep traversal", rrq("/sub/../../../etc/passwd", "octet"), ErrAccess},
		{"backslash traversal", rrq(`..\secret`, "octet"), ErrAccess},
		{"absolute path", rrq("/etc/passwd", "octet"), ErrFileNotFound},
		{"symlink out", rrq("escape", "octet"), ErrAccess},
		{"directory", rrq("sub/dir", "octet"), ErrFileNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, addr)
			c.send(addr, tc.pkt)
			code, msg := c.expectError()
			if code != tc.code {
				t.Errorf("error %d %q, want code %d", code, msg, tc.code)
			}
		})
	}
	// An ERROR sent to the server gets no answer.
	c := newClient(t, addr)
	c.send(addr, errorPacket(ErrUndefined, "hi"))
	if pkt, _, ok := c.recv(300 * time.Millisecond); ok {
		t.Errorf("the server answered an ERROR: %q", pkt)
	}
	// Unknown options are ignored, bad option values too: a plain
	// transfer follows.
	got := c.get(t, rrq("hello.txt", "octet", "windowsize", "8", "blksize", "huge"))
	if !bytes.Equal(got, files["hello.txt"]) {
		t.Errorf("got %q", got)
	}
	// The server is still serving real clients.
	if out, err := curl(t, fmt.Sprintf("tftp://%s/hello.txt", addr)); err != nil || !bytes.Equal(out, files["hello.txt"]) {
		t.Errorf("after the bad requests: %v %q", err, out)
	}
	if n := len(log.all()); n < 18 {
		t.Errorf("%d log records, want one per request", n)
	}
}

// get runs a whole transfer with the scripted client, ACKing each block.
func (c *client) get(t *testing.T, req []byte) []byte {
	t.Helper()
	c.send(c.server, req)
	var data []byte
	want := uint16(1)
	for {
		pkt, from, ok := c.recv(3 * time.Second)
		if !ok {
			t.Fatal("timeout")
		}
		op := binary.BigEndian.Uint16(pkt)
		switch op {
		case opOACK:
			c.send(from, ack(0))
			continue
		case opERROR:
			_, _, err := parseReply(pkt)
			t.Fatal(err)
		case opDATA:
		default:
			t.Fatalf("opcode %d", op)
		}
		block := binary.BigEndian.Uint16(pkt[2:])
		if block == want {
			data = append(data, pkt[4:]...)
			want++
		}
		c.send(from, ack(block))
		if len(pkt)-4 < DefaultBlockSize {
			return data
		}
	}
}

// recvData waits for DATA block want, skipping retransmissions of what
// came before it (a loaded machine may be slower than the timeout).
func (c *client) recvData(want uint16) []byte {
	c.t.Helper()
	for {
		pkt, _, ok := c.recv(3 * time.Second)
		if !ok {
			c.t.Fatalf("no block %d", want)
		}
		op, block := binary.BigEndian.Uint16(pkt), binary.BigEndian.Uint16(pkt[2:])
		if op == opOACK || (op == opDATA && block < want) {
			continue
		}
		if op != opDATA || block != want {
			c.t.Fatalf("want block %d, got opcode %d block %d", want, op, block)
		}
		return pkt
	}
}

func TestRetransmission(t *testing.T) {
	addr, _, files, log := startServer(t, func(s *Server) { s.Timeout = 400 * time.Millisecond })
	c := newClient(t, addr)
	c.send(addr, rrq("exact1024", "octet", "blksize", "512", "tsize", "0"))

	// The OACK names the accepted options.
	pkt, tid, ok := c.recv(2 * time.Second)
	if !ok || binary.BigEndian.Uint16(pkt) != opOACK {
		t.Fatalf("want an OACK, got %q", pkt)
	}
	if !bytes.Contains(pkt, []byte("tsize\x001024\x00")) || !bytes.Contains(pkt, []byte("blksize\x00512\x00")) {
		t.Errorf("OACK %q", pkt)
	}
	if tid.Port() == addr.Port() {
		t.Error("the transfer uses the server's port, not its own")
	}
	// Do not acknowledge: the OACK comes again after the timeout.
	if again, _, ok := c.recv(2 * time.Second); !ok || !bytes.Equal(again, pkt) {
		t.Fatalf("no retransmitted OACK: %q", again)
	}
	c.send(tid, ack(0))
	block1 := c.recvData(1)
	// A packet from another port is told "unknown transfer ID" and the
	// transfer goes on.
	stranger := newClient(t, addr)
	stranger.send(tid, ack(1))
	if code, _ := stranger.expectError(); code != ErrUnknownTID {
		t.Errorf("stranger got error %d", code)
	}
	// Lose block 1 twice: it is sent again each time.
	for i := 0; i < 2; i++ {
		again, _, ok := c.recv(2 * time.Second)
		if !ok || !bytes.Equal(again, block1) {
			t.Fatalf("retransmit %d: %v %d bytes", i, ok, len(again))
		}
	}
	c.send(tid, ack(1))
	block2 := c.recvData(2)
	// A duplicate ACK of block 1 does not make the server send block 2
	// again at once.
	c.send(tid, ack(1))
	if pkt, _, ok := c.recv(100 * time.Millisecond); ok {
		t.Errorf("answered a duplicate ACK with %d bytes", len(pkt))
	}
	c.send(tid, ack(2))
	if last := c.recvData(3); len(last) != 4 {
		t.Errorf("want an empty block 3, got %d bytes", len(last))
	}
	c.send(tid, ack(3))
	if got := append(append([]byte{}, block1[4:]...), block2[4:]...); !bytes.Equal(got, files["exact1024"]) {
		t.Error("contents differ")
	}
	tr := log.waitFor(t, "exact1024")
	if tr.Err != nil || tr.Retransmits < 3 || tr.Bytes != 1024 {
		t.Errorf("log %+v", tr)
	}
}

func TestGiveUpAfterRetries(t *testing.T) {
	addr, _, _, log := startServer(t, func(s *Server) { s.Timeout = 50 * time.Millisecond; s.Retries = 2 })
	c := newClient(t, addr)
	c.send(addr, rrq("hello.txt", "octet"))
	n := 0
	for {
		if _, _, ok := c.recv(500 * time.Millisecond); !ok {
			break
		}
		n++
	}
	if n != 3 {
		t.Errorf("got block 1 %d times, want 3 (once and 2 retries)", n)
	}
	if tr := log.waitFor(t, "hello.txt"); !errors.Is(tr.Err, errTimeout) {
		t.Errorf("log %+v", tr)
	}
}

func TestClientError(t *testing.T) {
	addr, _, _, log := startServer(t, nil)
	c := newClient(t, addr)
	c.send(addr, rrq("big.bin", "octet", "blksize", "99999"))
	pkt, tid, _ := c.recv(2 * time.Second)
	if !bytes.Contains(pkt, []byte("blksize\x0065464\x00")) {
		t.Errorf("blksize not capped at 65464: %q", pkt)
	}
	c.send(tid, errorPacket(ErrOptionRefused, "no thanks"))
	tr := log.waitFor(t, "big.bin")
	var re *RemoteError
	if !errors.As(tr.Err, &re) || re.Code != ErrOptionRefused {
		t.Errorf("log %+v", tr)
	}
}

func TestMaxTransfers(t *testing.T) {
	addr, _, _, _ := startServer(t, func(s *Server) { s.MaxTransfers = 1; s.Timeout = time.Second })
	hog := newClient(t, addr)
	hog.send(addr, rrq("big.bin", "octet"))
	if _, _, ok := hog.recv(2 * time.Second); !ok {
		t.Fatal("no first block")
	}
	c := newClient(t, addr)
	c.send(addr, rrq("hello.txt", "octet"))
	if code, msg := c.expectError(); code != ErrUndefined || !strings.Contains(msg, "busy") {
		t.Errorf("error %d %q", code, msg)
	}
}

func TestCloseAbortsTransfers(t *testing.T) {
	fsys, err := DirFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{FS: fsys}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(conn) }()
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	s.Close()
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{
		"a":          "a",
		"/a/b":       "a/b",
		"//a//b/":    "a/b",
		`\boot\x.0`:  "boot/x.0",
		"./a":        "a",
		"..":         "",
		"a/../../b":  "",
		"/":          "",
		"a/./b/../c": "",
	} {
		got, e := cleanPath(in)
		if want == "" {
			if e == nil {
				t.Errorf("cleanPath(%q) = %q, want an error", in, got)
			}
			continue
		}
		if e != nil || got != want {
			t.Errorf("cleanPath(%q) = %q, %v; want %q", in, got, e, want)
		}
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

func TestNetascii(t *testing.T) {
	r := &netasciiReader{r: bufioReader("a\nb\rc\r\n")}
	var out bytes.Buffer
	buf := make([]byte, 3) // conversions across read boundaries
	for {
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if want := "a\r\nb\r\x00c\r\x00\r\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

// TestAllow: Allow sees the client and the cleaned name, and its refusal is
// an access violation to the client and its reason in the log record.
func TestAllow(t *testing.T) {
	type asked struct {
		client netip.AddrPort
		file   string
	}
	var mu sync.Mutex
	var seen []asked
	addr, _, files, log := startServer(t, func(s *Server) {
		s.Allow = func(client netip.AddrPort, file string) error {
			mu.Lock()
			seen = append(seen, asked{client, file})
			mu.Unlock()
			if strings.HasPrefix(file, "sub/") {
				return errors.New("not for this machine")
			}
			return nil
		}
	})
	c := newClient(t, addr)
	c.send(addr, rrq("/sub//dir/./nested.bin", "octet"))
	code, msg := c.expectError()
	if code != ErrAccess || strings.Contains(msg, "not for this machine") {
		t.Errorf("error %d %q, want an access violation without the reason", code, msg)
	}
	tr := log.waitFor(t, "/sub//dir/./nested.bin")
	var e *Error
	if !errors.As(tr.Err, &e) || e.Code != ErrAccess || e.Message != "not for this machine" || tr.Bytes != 0 {
		t.Errorf("log record %+v", tr)
	}
	if got := c.get(t, rrq("hello.txt", "octet")); !bytes.Equal(got, files["hello.txt"]) {
		t.Errorf("an allowed file: %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0].file != "sub/dir/nested.bin" || seen[1].file != "hello.txt" ||
		seen[0].client.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("Allow was asked %+v", seen)
	}
}
