package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"kiln/internal/fsutil"
)

var lookPath = exec.LookPath

// OVMF firmware locations (Debian's ovmf package), preferred first.
var ovmfPairs = [][2]string{
	{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"},
	{"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
}

// escape doubles commas, QEMU's escape inside an option value.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// kernelAppend returns the kernel command line.
func kernelAppend(c *Config) string {
	args := append([]string{}, c.Append...)
	if !c.NoDefaultAppend {
		var hasConsole, hasPanic bool
		for _, a := range c.Append {
			hasConsole = hasConsole || strings.HasPrefix(a, "console=")
			hasPanic = hasPanic || strings.HasPrefix(a, "panic=")
		}
		var def []string
		if !hasConsole {
			def = append(def, "console=ttyS0")
		}
		if !hasPanic {
			def = append(def, "panic=-1")
		}
		args = append(def, args...)
	}
	return strings.Join(args, " ")
}

// FreeTCPPort is a TCP port free on addr when asked, for a caller that
// binds it (or gives it to QEMU) soon after and must know it beforehand.
func FreeTCPPort(addr string) (int, error) { return pickPort("tcp", addr) }

// pickPort finds a free port on addr for a forward with HostPort 0. The port
// is free when checked; QEMU binds it right after.
func pickPort(proto, addr string) (int, error) {
	if proto == "udp" {
		c, err := net.ListenPacket("udp", net.JoinHostPort(addr, "0"))
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// buildArgs turns a Config into QEMU's argument list (without the binary).
// dir is the VM's private directory (QMP socket, OVMF variables). It fills in
// the host ports of forwards that asked for any free port.
func buildArgs(c *Config, dir string, kvm bool) ([]string, error) {
	a := []string{
		"-nodefaults", "-no-user-config",
		"-display", "none",
	}
	if !c.Reboot {
		a = append(a, "-no-reboot")
	}
	a = append(a,
		"-M", c.Machine,
		"-m", strconv.Itoa(c.MemoryMB),
		"-smp", strconv.Itoa(c.CPUs),
	)
	if kvm {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		a = append(a, "-accel", "tcg", "-cpu", "max")
	}
	// The serial console is QEMU's stdio; QMP is a private unix socket.
	a = append(a,
		"-chardev", "stdio,id=console0,signal=off",
		"-serial", "chardev:console0",
		"-qmp", "unix:"+escape(filepath.Join(dir, "qmp.sock"))+",server=on,wait=off",
	)
	if c.OVMF {
		code, vars := c.OVMFCode, c.OVMFVars
		if code == "" || vars == "" {
			for _, p := range ovmfPairs {
				if _, err := os.Stat(p[0]); err == nil {
					code, vars = p[0], p[1]
					break
				}
			}
		}
		if code == "" {
			return nil, fmt.Errorf("qemu: OVMF firmware not found (install the ovmf package)")
		}
		myVars := filepath.Join(dir, "OVMF_VARS.fd")
		if _, err := fsutil.CopyFile(myVars, vars, 0o600); err != nil {
			return nil, fmt.Errorf("qemu: OVMF variables: %w", err)
		}
		a = append(a,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+escape(code),
			"-drive", "if=pflash,format=raw,unit=1,file="+escape(myVars),
		)
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if s := kernelAppend(c); s != "" {
			a = append(a, "-append", s)
		}
	} else if c.Initrd != "" || len(c.Append) > 0 {
		return nil, fmt.Errorf("qemu: an initramfs or kernel arguments need WithKernel")
	}
	for i, d := range c.Disks {
		opt := fmt.Sprintf("file=%s,format=%s,if=%s,id=disk%d", escape(d.Path), d.Format, d.Interface, i)
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		if d.Snapshot {
			opt += ",snapshot=on"
		}
		if d.Cache != "" {
			opt += ",cache=" + d.Cache
		}
		a = append(a, "-drive", opt)
	}
	if c.CDROM != "" {
		a = append(a, "-drive", "file="+escape(c.CDROM)+",media=cdrom,readonly=on,id=cdrom0")
	}
	if c.Boot != "" {
		a = append(a, "-boot", "order="+c.Boot)
	}
	for i := range c.nics {
		n := &c.nics[i]
		id := fmt.Sprintf("net%d", i)
		mac := n.mac
		if mac == "" {
			mac = defaultMAC(i)
		}
		if _, err := net.ParseMAC(mac); err != nil {
			return nil, fmt.Errorf("qemu: MAC %q: %w", mac, err)
		}
		var nd string
		switch n.kind {
		case "user":
			// restrict=on unless the caller set Egress, the one explicit
			// way out: no guest traffic may leave the host otherwise
			// (README, Egress).
			nd = "user,id=" + id + ",restrict=on"
			if n.user.Egress {
				// IPv4 NAT only: no IPv6 prefix or router
				// advertisements on top of what was asked.
				nd = "user,id=" + id + ",restrict=off,ipv6=off"
			}
			for j := range n.user.Forwards {
				f := &n.user.Forwards[j]
				if f.HostPort == 0 {
					p, err := pickPort(f.Proto, f.HostAddr)
					if err != nil {
						return nil, fmt.Errorf("qemu: picking a port for %+v: %w", *f, err)
					}
					f.HostPort = p
				}
				host := f.HostAddr
				if strings.Contains(host, ":") {
					host = "[" + host + "]"
				}
				nd += fmt.Sprintf(",hostfwd=%s:%s:%d-:%d", f.Proto, host, f.HostPort, f.GuestPort)
			}
			for _, g := range n.user.GuestForwards {
				nd += "," + escape(g.arg())
			}
			if n.user.TFTPRoot != "" {
				nd += ",tftp=" + escape(n.user.TFTPRoot)
			}
			if n.user.BootFile != "" {
				nd += ",bootfile=" + escape(n.user.BootFile)
			}
		case "stream":
			host, port, err := net.SplitHostPort(n.hub)
			if err != nil {
				return nil, err
			}
			nd = fmt.Sprintf("stream,id=%s,server=off,addr.type=inet,addr.host=%s,addr.port=%s", id, host, port)
		case "tap":
			nd = fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", id, n.tap)
		default:
			return nil, fmt.Errorf("qemu: unknown netdev kind %q", n.kind)
		}
		model := n.model
		if model == "" {
			model = "virtio-net-pci"
		}
		a = append(a, "-netdev", nd, "-device", fmt.Sprintf("%s,netdev=%s,mac=%s", model, id, mac))
	}
	if err := checkExtraNet(c.ExtraArgs); err != nil {
		return nil, err
	}
	a = append(a, c.ExtraArgs...)
	return a, nil
}

// Egress reports whether the config has a user network with egress
// (restrict=off).
func (c *Config) Egress() bool {
	for _, n := range c.nics {
		if n.kind == "user" && n.user.Egress {
			return true
		}
	}
	return false
}

// checkEgress refuses a user network with egress in a test binary
// (inTest: testing.Testing()): tests keep restrict=on everywhere, and a
// test that asked for egress fails instead of opening the host's network.
func checkEgress(c *Config, inTest bool) error {
	if inTest && c.Egress() {
		return errors.New("qemu: a user network with egress (restrict=off) is refused in a test binary: tests keep restrict=on")
	}
	return nil
}

// checkExtraNet refuses user-mode networking smuggled in through raw
// arguments without restrict=on: egress is UserNet.Egress, never a raw
// argument.
func checkExtraNet(extra []string) error {
	for i := 0; i+1 < len(extra); i++ {
		switch strings.TrimLeft(extra[i], "-") {
		case "netdev", "nic", "net":
		default:
			continue
		}
		val := extra[i+1]
		opts := strings.Split(val, ",")
		user := opts[0] == "user"
		restricted, other := false, false
		for _, o := range opts {
			switch {
			case o == "type=user":
				user = true
			case o == "restrict=on":
				restricted = true
			case strings.Contains(o, "restrict"):
				// restrict=off, =no, a bare norestrict: anything but
				// restrict=on counts as a way out.
				other = true
			}
		}
		if user && (!restricted || other) {
			return fmt.Errorf("qemu: %s %s: user networking here needs restrict=on and nothing else (use WithUserNet; egress is UserNet.Egress only)", extra[i], val)
		}
	}
	return nil
}
