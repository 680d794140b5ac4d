package qemu

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// GuestForward hands the guest's TCP connections to GuestAddr:GuestPort,
// an address of the user network that no machine holds, to a program QEMU
// starts on the host for each connection, the connection its standard
// input, output and error (QEMU's guestfwd=tcp:ADDR:PORT-cmd:COMMAND).
// It is how a guest under restrict=on reaches one service on the host's
// loopback, a test registry say, and nothing else: restrict=on stays.
//
// A program per connection, not QEMU's other guestfwd target (a chardev):
// a chardev is one stream for QEMU's whole life, so a client that opens
// several connections (containerd pulling layers side by side) would mix
// them up. ProxyCommand gives the usual program: a copy of the caller
// that relays the connection to a host address.
type GuestForward struct {
	// GuestAddr is an IPv4 address in QEMU's user network (10.0.2.0/24),
	// other than the host's .2, the DNS server's .3 and the guest's .15.
	GuestAddr string
	GuestPort int
	// Command is the program and its arguments, run without a shell.
	Command []string
}

// The user network QEMU's slirp makes by default, and its own addresses
// there: a guest forward may not take them.
var (
	userNetPrefix = netip.MustParsePrefix("10.0.2.0/24")
	userNetTaken  = map[netip.Addr]string{
		netip.MustParseAddr("10.0.2.0"):   "the network's own address",
		netip.MustParseAddr("10.0.2.2"):   "the host's (the gateway)",
		netip.MustParseAddr("10.0.2.3"):   "the DNS server's",
		netip.MustParseAddr("10.0.2.15"):  "the guest's",
		netip.MustParseAddr("10.0.2.255"): "the broadcast address",
	}
)

func checkGuestForwards(gs []GuestForward) error {
	seen := map[string]bool{}
	for _, g := range gs {
		a, err := netip.ParseAddr(g.GuestAddr)
		if err != nil || !userNetPrefix.Contains(a) {
			return fmt.Errorf("qemu: guest forward address %q: want an IPv4 address in the user network %s (e.g. 10.0.2.100)", g.GuestAddr, userNetPrefix)
		}
		if what, taken := userNetTaken[a]; taken {
			return fmt.Errorf("qemu: guest forward address %s is %s: choose another in %s (e.g. 10.0.2.100)", a, what, userNetPrefix)
		}
		if g.GuestPort < 1 || g.GuestPort > 65535 {
			return fmt.Errorf("qemu: guest forward %s: port %d is not a TCP port", a, g.GuestPort)
		}
		key := net.JoinHostPort(a.String(), strconv.Itoa(g.GuestPort))
		if seen[key] {
			return fmt.Errorf("qemu: guest forward %s is given twice", key)
		}
		seen[key] = true
		if len(g.Command) == 0 || g.Command[0] == "" {
			return fmt.Errorf("qemu: guest forward %s has no command", key)
		}
		for _, a := range g.Command {
			if strings.ContainsAny(a, "\x00\n") {
				return fmt.Errorf("qemu: guest forward %s: a command argument holds a NUL or a newline", key)
			}
		}
	}
	return nil
}

// arg is the guestfwd option, before QEMU's comma escaping. QEMU parses
// the command as a shell would (GLib's g_shell_parse_argv) and runs it
// without one: each argument is single-quoted.
func (g GuestForward) arg() string {
	quoted := make([]string, len(g.Command))
	for i, a := range g.Command {
		quoted[i] = shellQuote(a)
	}
	return fmt.Sprintf("guestfwd=tcp:%s:%d-cmd:%s", g.GuestAddr, g.GuestPort, strings.Join(quoted, " "))
}

// shellQuote is s in single quotes; a single quote in s ends the quoted
// part, is escaped with a backslash, and the quoting starts again.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// proxyArg is the first argument of ProxyCommand's program: it makes
// ServeProxy relay.
const proxyArg = "-kiln-qemu-guestfwd-proxy"

// ProxyCommand is a GuestForward's Command that relays each connection to
// hostAddr (host:port, e.g. a test server on 127.0.0.1): this very
// program again, which ServeProxy turns into the relay. A program that
// uses it calls ServeProxy first thing (a test package: in an init
// function, which runs before the testing package reads its flags).
func ProxyCommand(hostAddr string) ([]string, error) {
	if _, _, err := net.SplitHostPort(hostAddr); err != nil {
		return nil, fmt.Errorf("qemu: proxy address %q: %w", hostAddr, err)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return []string{exe, proxyArg, hostAddr}, nil
}

// ServeProxy returns at once unless this process is ProxyCommand's
// program: then it relays its standard input and output (the guest's
// connection) to the host address and exits, with status 1 when that
// address does not answer (QEMU then closes the guest's connection).
// It writes nothing: its standard error is the connection too.
func ServeProxy() {
	if len(os.Args) != 3 || os.Args[1] != proxyArg {
		return
	}
	if err := relay(os.Args[2], os.Stdin, os.Stdout); err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

// relay copies in to a connection to addr and the answer to out, until
// addr is done answering. The end of in (the guest closed its side) is
// passed on as a half close, so a client that closes first still gets
// its answer.
func relay(addr string, in io.Reader, out io.Writer) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	go func() {
		io.Copy(c, in)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	if _, err := io.Copy(out, c); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
