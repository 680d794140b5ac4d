// Package tftp is a small read-only TFTP server: RFC 1350 with option
// negotiation (RFC 2347), the blksize option (RFC 2348) and the timeout and
// tsize options (RFC 2349). It serves files from an fs.FS (DirFS keeps the
// clients inside one directory, symbolic links included), in octet or
// netascii mode, one UDP socket per transfer, with retransmission on
// timeout, a bound on concurrent transfers, and a log record per transfer.
//
// Every Go TFTP library tried is refused by the module proxy kiln builds
// with, so this is kiln's own; its tests run it against tftp-hpa's and
// curl's clients.
package tftp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults of the Server's zero fields.
const (
	DefaultTimeout      = time.Second
	DefaultRetries      = 5
	DefaultMaxTransfers = 64
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("tftp: server closed")

// Transfer is the log record of one request: a completed or failed
// download, or a refused or malformed request.
type Transfer struct {
	Client netip.AddrPort
	// File is the name the client asked for ("" if the request did not
	// parse).
	File string
	Mode string
	// BlockSize is the negotiated block size.
	BlockSize int
	// Size is the file's size (-1 when the file was not opened).
	Size int64
	// Bytes is how many bytes of data the client acknowledged.
	Bytes       int64
	Retransmits int
	Duration    time.Duration
	// Err is nil for a complete transfer; *Error when the server refused
	// (file not found, access violation, ...); *RemoteError when the client
	// ended it.
	Err error
}

func (t Transfer) String() string {
	s := fmt.Sprintf("tftp %s %q %d bytes in %s (blksize %d", t.Client, t.File, t.Bytes,
		t.Duration.Round(time.Millisecond), t.BlockSize)
	if t.Retransmits > 0 {
		s += fmt.Sprintf(", %d retransmits", t.Retransmits)
	}
	s += ")"
	if t.Err != nil {
		s += ": " + t.Err.Error()
	}
	return s
}

// Server serves the files of FS over TFTP. Set the fields before Serve.
type Server struct {
	// FS holds the files; names are slash-separated paths relative to it.
	FS fs.FS
	// Timeout is how long the server waits for an ACK before sending a
	// packet again (default 1 s); a client's timeout option overrides it.
	Timeout time.Duration
	// Retries is how many times a packet is sent again before the
	// transfer is abandoned (default 5).
	Retries int
	// MaxBlockSize caps the blksize option (default and maximum 65464).
	MaxBlockSize int
	// MaxTransfers bounds concurrent transfers (default 64); a request
	// beyond it is answered "server busy".
	MaxTransfers int
	// Allow, if set, is asked before a file is opened, with the client's
	// address and the file's cleaned name ("images/worker/vmlinuz"). An
	// error refuses the request: the client is told "access violation",
	// and the log record's Err is an *Error (code ErrAccess) whose
	// message is the error's.
	Allow func(client netip.AddrPort, file string) error
	// Log, if set, is called once per request when it is over.
	Log func(Transfer)

	mu        sync.Mutex
	closed    bool
	listeners []*net.UDPConn
	ctx       context.Context
	cancel    context.CancelFunc
	sem       chan struct{}
	wg        sync.WaitGroup
}

// DirFS returns a file system of the directory dir that no name can leave:
// "..", absolute paths and symbolic links pointing outside are refused (it
// is an os.Root, open for the life of the program).
func DirFS(dir string) (fs.FS, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return r.FS(), nil
}

func (s *Server) init() {
	if s.ctx == nil {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		n := s.MaxTransfers
		if n <= 0 {
			n = DefaultMaxTransfers
		}
		s.sem = make(chan struct{}, n)
	}
}

// ListenAndServe listens on the UDP address addr ("127.0.0.1:69") and
// serves.
func (s *Server) ListenAndServe(addr string) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return err
	}
	return s.Serve(conn)
}

// Serve reads requests from conn until Close, and closes conn. Each
// transfer gets its own socket on conn's local address (with the port the
// kernel picks, the transfer ID of RFC 1350). When conn is bound to an
// unspecified address, the kernel chooses the transfers' source address:
// bind to the address clients use when the host has several.
func (s *Server) Serve(conn *net.UDPConn) error {
	s.mu.Lock()
	s.init()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return ErrServerClosed
	}
	s.listeners = append(s.listeners, conn)
	s.mu.Unlock()
	defer conn.Close()

	local := netip.IPv4Unspecified()
	if la, ok := conn.LocalAddr().(*net.UDPAddr); ok {
		if a, ok := netip.AddrFromSlice(la.IP); ok {
			local = a.Unmap()
		}
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		s.handle(conn, local, from, append([]byte(nil), buf[:n]...))
	}
}

// Close stops the listeners, aborts the transfers under way and waits for
// them to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.init()
	s.closed = true
	for _, l := range s.listeners {
		l.Close()
	}
	s.cancel()
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) log(t Transfer) {
	if s.Log != nil {
		s.Log(t)
	}
}

// handle answers one packet that arrived on the server's port.
func (s *Server) handle(conn *net.UDPConn, local netip.Addr, from netip.AddrPort, pkt []byte) {
	req, err := parseRequest(pkt)
	if err != nil {
		// Never answer an ERROR (two servers could bounce errors
		// forever); answer anything else that is not a request with an
		// error packet.
		if len(pkt) >= 2 && pkt[0] == 0 && uint16(pkt[1]) == opERROR {
			return
		}
		e := &Error{Code: ErrIllegalOp, Message: "illegal TFTP operation: " + err.Error()}
		conn.WriteToUDPAddrPort(errorPacket(e.Code, e.Message), from)
		s.log(Transfer{Client: from, Size: -1, BlockSize: DefaultBlockSize, Err: e})
		return
	}
	if req.op == opWRQ {
		e := &Error{Code: ErrAccess, Message: "this server is read-only"}
		conn.WriteToUDPAddrPort(errorPacket(e.Code, e.Message), from)
		s.log(Transfer{Client: from, File: req.filename, Mode: req.mode, Size: -1, BlockSize: DefaultBlockSize, Err: e})
		return
	}
	select {
	case s.sem <- struct{}{}:
	default:
		e := &Error{Code: ErrUndefined, Message: "server busy, try again later"}
		conn.WriteToUDPAddrPort(errorPacket(e.Code, e.Message), from)
		s.log(Transfer{Client: from, File: req.filename, Mode: req.mode, Size: -1, BlockSize: DefaultBlockSize, Err: e})
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.sem
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() { <-s.sem }()
		s.transfer(s.ctx, req, local, from)
	}()
}

// xfer is one transfer's socket and retransmission state.
type xfer struct {
	conn        *net.UDPConn
	client      netip.AddrPort
	timeout     time.Duration
	retries     int
	retransmits int
	rbuf        []byte
}

var errTimeout = errors.New("timed out waiting for an ACK")

// exchange sends pkt and waits for the ACK of block want, sending pkt
// again after each timeout. Old (duplicate) ACKs are ignored rather than
// answered, which avoids the Sorcerer's Apprentice syndrome.
func (x *xfer) exchange(pkt []byte, want uint16) error {
	if _, err := x.conn.WriteToUDPAddrPort(pkt, x.client); err != nil {
		return err
	}
	tries := 0
	deadline := time.Now().Add(x.timeout)
	for {
		x.conn.SetReadDeadline(deadline)
		n, from, err := x.conn.ReadFromUDPAddrPort(x.rbuf)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return err
			}
			tries++
			if tries > x.retries {
				return errTimeout
			}
			x.retransmits++
			if _, err := x.conn.WriteToUDPAddrPort(pkt, x.client); err != nil {
				return err
			}
			deadline = time.Now().Add(x.timeout)
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if from != x.client {
			// RFC 1350: a packet from another host or port gets an
			// error, and the transfer goes on.
			x.conn.WriteToUDPAddrPort(errorPacket(ErrUnknownTID, "unknown transfer ID"), from)
			continue
		}
		op, block, err := parseReply(x.rbuf[:n])
		if op == opERROR {
			return err
		}
		if err == nil && block == want {
			return nil
		}
	}
}

func (x *xfer) fail(e *Error) error {
	x.conn.WriteToUDPAddrPort(errorPacket(e.Code, e.Message), x.client)
	return e
}

// transfer sends one file.
func (s *Server) transfer(ctx context.Context, req request, local netip.Addr, client netip.AddrPort) {
	start := time.Now()
	t := Transfer{Client: client, File: req.filename, Mode: req.mode, BlockSize: DefaultBlockSize, Size: -1}
	defer func() {
		t.Duration = time.Since(start)
		s.log(t)
	}()

	var laddr *net.UDPAddr
	if !local.IsUnspecified() {
		laddr = &net.UDPAddr{IP: local.AsSlice(), Zone: local.Zone()}
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		t.Err = fmt.Errorf("transfer socket: %w", err)
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	x := &xfer{conn: conn, client: client, timeout: s.Timeout, retries: s.Retries, rbuf: make([]byte, 1500)}
	if x.timeout <= 0 {
		x.timeout = DefaultTimeout
	}
	if x.retries <= 0 {
		x.retries = DefaultRetries
	}
	defer func() { t.Retransmits = x.retransmits }()

	if req.mode != "octet" && req.mode != "netascii" {
		t.Err = x.fail(&Error{Code: ErrIllegalOp, Message: fmt.Sprintf("transfer mode %q is not supported (want octet or netascii)", req.mode)})
		return
	}
	name, e := cleanPath(req.filename)
	if e != nil {
		t.Err = x.fail(e)
		return
	}
	if s.Allow != nil {
		if err := s.Allow(client, name); err != nil {
			x.fail(&Error{Code: ErrAccess, Message: "access violation: not served to this client"})
			t.Err = &Error{Code: ErrAccess, Message: err.Error()}
			return
		}
	}
	f, size, e := s.open(name)
	if e != nil {
		t.Err = x.fail(e)
		return
	}
	defer f.Close()
	t.Size = size

	// Option negotiation (RFC 2347): answer the options we accept in an
	// OACK, which the client acknowledges as block 0.
	blksize := DefaultBlockSize
	maxBlk := s.MaxBlockSize
	if maxBlk <= 0 || maxBlk > MaxBlockSize {
		maxBlk = MaxBlockSize
	}
	if maxBlk < MinBlockSize {
		maxBlk = MinBlockSize
	}
	var accepted []option
	seen := map[string]bool{}
	for _, o := range req.options {
		if seen[o.name] {
			continue
		}
		seen[o.name] = true
		switch o.name {
		case "blksize":
			n, err := strconv.Atoi(o.value)
			if err != nil || n < MinBlockSize {
				continue
			}
			blksize = min(n, maxBlk)
			accepted = append(accepted, option{"blksize", strconv.Itoa(blksize)})
		case "tsize":
			// The size of a netascii transfer is not the file's:
			// leave the option out. So for an empty file: curl takes
			// "tsize 0" in an OACK for an error.
			if req.mode == "octet" && size > 0 {
				accepted = append(accepted, option{"tsize", strconv.FormatInt(size, 10)})
			}
		case "timeout":
			n, err := strconv.Atoi(o.value)
			if err != nil || n < 1 || n > 255 {
				continue
			}
			x.timeout = time.Duration(n) * time.Second
			accepted = append(accepted, option{"timeout", strconv.Itoa(n)})
		}
	}
	t.BlockSize = blksize
	if len(accepted) > 0 {
		if err := x.exchange(oackPacket(accepted), 0); err != nil {
			t.Err = fmt.Errorf("option acknowledgement: %w", err)
			return
		}
	}

	var r io.Reader = bufio.NewReaderSize(f, 64<<10)
	if req.mode == "netascii" {
		r = &netasciiReader{r: r.(*bufio.Reader)}
	}
	buf := make([]byte, 4+blksize)
	block := uint16(1)
	for {
		n, err := io.ReadFull(r, buf[4:])
		last := false
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			last = true
		case err != nil:
			x.fail(&Error{Code: ErrUndefined, Message: "read error"})
			t.Err = fmt.Errorf("reading %s: %w", req.filename, err)
			return
		}
		if err := x.exchange(dataPacket(buf, block, n), block); err != nil {
			if last && errors.Is(err, errTimeout) {
				err = fmt.Errorf("no ACK for the last block (the client may have the whole file): %w", err)
			}
			t.Err = err
			return
		}
		t.Bytes += int64(n)
		if last {
			return
		}
		// Block numbers roll over to 0 after 65535 (what tftp-hpa,
		// curl and iPXE expect for files over 32 MB at 512 bytes).
		block++
	}
}

// open resolves a requested name in FS. The *Error is what the client is
// told.
func (s *Server) open(name string) (fs.File, int64, *Error) {
	p, e := cleanPath(name)
	if e != nil {
		return nil, 0, e
	}
	if s.FS == nil {
		return nil, 0, &Error{Code: ErrFileNotFound, Message: "file not found"}
	}
	f, err := s.FS.Open(p)
	switch {
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		return nil, 0, &Error{Code: ErrFileNotFound, Message: "file not found"}
	default:
		// Permission denied, or a symbolic link out of the root.
		return nil, 0, &Error{Code: ErrAccess, Message: "access violation"}
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, &Error{Code: ErrFileNotFound, Message: "not a file"}
	}
	return f, fi.Size(), nil
}

// cleanPath turns a requested name into an fs.FS path. Leading slashes are
// dropped (clients often ask for "/pxelinux.0"), backslashes are
// separators, and any ".." element is refused.
func cleanPath(name string) (string, *Error) {
	n := strings.ReplaceAll(name, `\`, "/")
	for _, el := range strings.Split(n, "/") {
		if el == ".." {
			return "", &Error{Code: ErrAccess, Message: "access violation: \"..\" in the file name"}
		}
	}
	n = strings.TrimPrefix(path.Clean("/"+n), "/")
	if n == "" || !fs.ValidPath(n) {
		return "", &Error{Code: ErrAccess, Message: "access violation: bad file name"}
	}
	return n, nil
}

// netasciiReader converts a file to netascii: LF becomes CR LF and CR
// becomes CR NUL.
type netasciiReader struct {
	r       *bufio.Reader
	pending byte
	has     bool
}

func (n *netasciiReader) Read(p []byte) (int, error) {
	i := 0
	for i < len(p) {
		if n.has {
			p[i] = n.pending
			n.has = false
			i++
			continue
		}
		b, err := n.r.ReadByte()
		if err != nil {
			if i > 0 {
				return i, nil
			}
			return 0, err
		}
		switch b {
		case '\n':
			p[i], n.pending, n.has = '\r', '\n', true
		case '\r':
			p[i], n.pending, n.has = '\r', 0, true
		default:
			p[i] = b
		}
		i++
	}
	return i, nil
}
