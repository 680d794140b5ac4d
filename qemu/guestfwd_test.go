package qemu

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary is ProxyCommand's program in TestProxyCommand.
func init() { ServeProxy() }

func TestGuestForwardArgs(t *testing.T) {
	cfg := Config{Machine: "q35", MemoryMB: 256, CPUs: 1}
	opt := WithUserNetConfig(UserNet{
		Forwards: []Forward{{HostPort: 6443, GuestPort: 6443}},
		GuestForwards: []GuestForward{
			{GuestAddr: "10.0.2.100", GuestPort: 5000, Command: []string{"/tmp/vm.test", "-kiln-qemu-guestfwd-proxy", "127.0.0.1:41234"}},
			{GuestAddr: "10.0.2.101", GuestPort: 443, Command: []string{"/a dir/it's", "x,y"}},
		},
	})
	if err := opt(&cfg); err != nil {
		t.Fatal(err)
	}
	args, err := buildArgs(&cfg, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Join(args, " ")
	// The command is quoted for QEMU's shell-like parsing, its commas
	// doubled for QEMU's option parsing; restrict=on stays.
	want := `-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:6443-:6443,` +
		`guestfwd=tcp:10.0.2.100:5000-cmd:'/tmp/vm.test' '-kiln-qemu-guestfwd-proxy' '127.0.0.1:41234',` +
		`guestfwd=tcp:10.0.2.101:443-cmd:'/a dir/it'\''s' 'x,,y'`
	if !strings.Contains(s, want) {
		t.Errorf("args lack\n%s\nin\n%s", want, s)
	}

	for _, bad := range []GuestForward{
		{GuestAddr: "10.0.3.100", GuestPort: 1, Command: []string{"x"}}, // not the user network
		{GuestAddr: "10.0.2.2", GuestPort: 1, Command: []string{"x"}},   // the host
		{GuestAddr: "10.0.2.3", GuestPort: 1, Command: []string{"x"}},   // DNS
		{GuestAddr: "10.0.2.15", GuestPort: 1, Command: []string{"x"}},  // the guest
		{GuestAddr: "fd00::1", GuestPort: 1, Command: []string{"x"}},
		{GuestAddr: "10.0.2.100", GuestPort: 0, Command: []string{"x"}},
		{GuestAddr: "10.0.2.100", GuestPort: 1},
		{GuestAddr: "10.0.2.100", GuestPort: 1, Command: []string{"x", "a\nb"}},
	} {
		if err := WithUserNetConfig(UserNet{GuestForwards: []GuestForward{bad}})(&cfg); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	twice := GuestForward{GuestAddr: "10.0.2.100", GuestPort: 1, Command: []string{"x"}}
	if err := WithUserNetConfig(UserNet{GuestForwards: []GuestForward{twice, twice}})(&cfg); err == nil {
		t.Error("the same guest address and port twice accepted")
	}
}

// The quoting is what a shell (and so GLib's g_shell_parse_argv, which
// follows its rules) reads back as the same words.
func TestShellQuote(t *testing.T) {
	words := []string{"/a dir/it's", `back\slash "double"`, "x,y", "", "$HOME `cmd`"}
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, shellQuote(w))
	}
	out, err := exec.Command("sh", "-c", `for a in `+strings.Join(quoted, " ")+`; do printf '%s\n' "$a"; done`).Output()
	if err != nil {
		t.Skip("no sh:", err)
	}
	if got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n"); strings.Join(got, "|") != strings.Join(words, "|") {
		t.Errorf("sh read %q, want %q", got, words)
	}
}

// ProxyCommand's program relays a connection given as its standard input
// and output, as QEMU gives it (one end of a socket pair), to a server on
// loopback, and passes the client's half close on.
func TestProxyCommand(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// Answers once the client has said all (half close).
				b, _ := io.ReadAll(c)
				io.WriteString(c, "got "+string(b))
			}()
		}
	}()
	cmd, err := ProxyCommand(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // one program per connection
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		guest, qemuSide := os.NewFile(uintptr(fds[0]), "guest"), os.NewFile(uintptr(fds[1]), "slirp")
		p := exec.Command(cmd[0], cmd[1:]...)
		p.Stdin, p.Stdout, p.Stderr = qemuSide, qemuSide, qemuSide
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		qemuSide.Close()
		c, err := net.FileConn(guest)
		guest.Close()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "hello "+string(rune('0'+i)))
		c.(*net.UnixConn).CloseWrite()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		got, _ := bufio.NewReader(c).ReadString(0)
		c.Close()
		if want := "got hello " + string(rune('0'+i)); got != want {
			t.Errorf("connection %d: %q, want %q", i, got, want)
		}
		if err := p.Wait(); err != nil {
			t.Errorf("proxy: %v", err)
		}
	}
	// Nothing listens: the program fails, and QEMU closes the guest's
	// connection.
	ln.Close()
	p := exec.Command(cmd[0], cmd[1:]...)
	p.Stdin = strings.NewReader("")
	if err := p.Run(); err == nil {
		t.Error("a proxy to a closed port succeeded")
	}
}
