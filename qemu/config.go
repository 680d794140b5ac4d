// Package qemu boots kiln images in QEMU (qemu-system-x86_64) from tests and
// from the kiln CLI: direct kernel boot, ISO, disk or PXE; serial console
// capture with Expect; QMP for an ACPI shutdown. It uses KVM when /dev/kvm is
// usable and TCG otherwise.
//
// Network safety: user-mode networking is started with restrict=on, so no
// guest traffic leaves the host; port forwards still work, and a guest
// forward (GuestForward) reaches only the host program it names. The one
// exception is a UserNet whose Egress field says so, which a user asks for
// with kiln run --egress or kiln cluster up --egress; a test binary cannot
// start such a VM (Start refuses it).
package qemu

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Forward is a user-mode networking port forward from the host to the guest.
type Forward struct {
	Proto     string // "tcp" (default) or "udp"
	HostAddr  string // default 127.0.0.1
	HostPort  int    // 0: pick a free port on HostAddr (see VM.HostPort)
	GuestPort int
}

// UserNet configures a user-mode (slirp) network interface. restrict=on is
// set unless Egress is.
type UserNet struct {
	Forwards []Forward
	// GuestForwards are the guest's only way out under restrict=on: each
	// hands the guest's connections to one address of the user network
	// to a program on the host (see GuestForward).
	GuestForwards []GuestForward
	MAC           string // default 52:54:00:12:34:56 (+ interface index)
	// TFTPRoot and BootFile enable slirp's built-in TFTP server and the
	// DHCP boot file name, for PXE tests.
	TFTPRoot string
	BootFile string
	// Egress drops restrict=on (and turns IPv6 off): QEMU NATs the
	// guest's IPv4 connections to wherever the host can reach, the
	// host's LAN and the internet, and 10.0.2.2 is the host's own
	// loopback. It is the only way to an unrestricted user network
	// (raw arguments cannot make one, see checkExtraNet), for a user
	// who asks for it; Start refuses it in a test binary.
	Egress bool
}

// Disk is a drive attached to the VM.
type Disk struct {
	Path      string
	Format    string // "raw", "qcow2"; default from the file extension
	Interface string // "virtio" (default), "ide", "none", ...
	ReadOnly  bool
	// Snapshot writes to a temporary overlay, leaving Path unchanged
	// (boot the same built image several times).
	Snapshot bool
	// Cache is QEMU's cache mode ("" for QEMU's default, writeback).
	// "unsafe" ignores the guest's flushes: what the guest wrote stays
	// in the host's page cache and outlives a killed QEMU, only not a
	// host crash, and an fsync no longer costs a host disk flush (etcd
	// makes one per write).
	Cache string
}

// netdev is one guest NIC and its host side.
type netdev struct {
	kind  string // "user", "stream" or "tap"
	user  UserNet
	hub   string // host:port for stream
	tap   string // interface name for tap
	mac   string
	model string
}

// Config is what the options build. Start turns it into a command line.
type Config struct {
	Binary    string // default qemu-system-x86_64 from $PATH
	Machine   string // default "q35"
	Accel     string // "" or "auto" (KVM if usable, else TCG), "kvm", "tcg"
	MemoryMB  int    // default 512
	CPUs      int    // default 1
	Kernel    string
	Initrd    string
	Append    []string
	Disks     []Disk
	CDROM     string
	Boot      string // -boot order=…
	OVMF      bool
	OVMFCode  string // default /usr/share/OVMF/OVMF_CODE_4M.fd
	OVMFVars  string // template, copied per VM; default OVMF_VARS_4M.fd
	SerialLog string
	// ConsoleOutput also receives the raw serial output (e.g. os.Stdout
	// for `kiln run`).
	ConsoleOutput io.Writer
	ExtraArgs     []string
	// NoDefaultAppend leaves out console=ttyS0 and panic=-1.
	NoDefaultAppend bool
	// Reboot lets a guest's reboot reset the machine, which boots again
	// (from its disk, or the same -kernel), instead of QEMU exiting
	// (-no-reboot, the default: a panicking guest then ends the VM).
	Reboot bool
	// NetNS is a network namespace (ip netns) QEMU runs in: its tap
	// devices and user networking live there.
	NetNS string

	nics []netdev
}

// Option configures a VM.
type Option func(*Config) error

// WithBinary sets the QEMU binary.
func WithBinary(path string) Option {
	return func(c *Config) error { c.Binary = path; return nil }
}

// WithMachine sets the machine type (-M), e.g. "q35" or "pc".
func WithMachine(m string) Option {
	return func(c *Config) error { c.Machine = m; return nil }
}

// WithAccel forces the accelerator: "kvm", "tcg" or "auto".
func WithAccel(a string) Option {
	return func(c *Config) error {
		switch a {
		case "", "auto", "kvm", "tcg":
			c.Accel = a
			return nil
		}
		return fmt.Errorf("qemu: unknown accelerator %q", a)
	}
}

// WithKernel boots this kernel directly (-kernel).
func WithKernel(path string) Option {
	return func(c *Config) error { c.Kernel = path; return nil }
}

// WithInitramfs sets the initramfs (-initrd).
func WithInitramfs(path string) Option {
	return func(c *Config) error { c.Initrd = path; return nil }
}

// WithAppend adds kernel command line arguments. Unless they set console=
// or panic= themselves (or WithoutDefaultAppend is used), console=ttyS0 and
// panic=-1 are added: the console is what the VM API reads, and a panicking
// guest then reboots, which -no-reboot turns into QEMU exiting instead of a
// hang.
func WithAppend(args ...string) Option {
	return func(c *Config) error { c.Append = append(c.Append, args...); return nil }
}

// WithReboot lets the guest reboot (kiln reboot, a rollback through the
// firmware) instead of QEMU exiting when it does; a kernel panic then
// reboots the guest too, which the console still shows.
func WithReboot() Option {
	return func(c *Config) error { c.Reboot = true; return nil }
}

// WithoutDefaultAppend leaves out console=ttyS0 and panic=-1.
func WithoutDefaultAppend() Option {
	return func(c *Config) error { c.NoDefaultAppend = true; return nil }
}

// WithMemory sets the guest RAM in MiB. A large initramfs needs room to be
// unpacked: about its uncompressed size twice over.
func WithMemory(mb int) Option {
	return func(c *Config) error {
		if mb < 16 {
			return fmt.Errorf("qemu: memory %d MiB too small", mb)
		}
		c.MemoryMB = mb
		return nil
	}
}

// WithCPUs sets the number of virtual CPUs.
func WithCPUs(n int) Option {
	return func(c *Config) error {
		if n < 1 {
			return fmt.Errorf("qemu: %d CPUs", n)
		}
		c.CPUs = n
		return nil
	}
}

// WithDisk attaches a virtio disk image. format is "raw" or "qcow2" ("" picks
// from the extension).
func WithDisk(path, format string) Option {
	return WithDrive(Disk{Path: path, Format: format})
}

// WithDrive attaches a drive with full control over its settings.
func WithDrive(d Disk) Option {
	return func(c *Config) error {
		if d.Path == "" {
			return errors.New("qemu: disk without a path")
		}
		if d.Format == "" {
			d.Format = "raw"
			if strings.HasSuffix(d.Path, ".qcow2") {
				d.Format = "qcow2"
			}
		}
		if d.Interface == "" {
			d.Interface = "virtio"
		}
		c.Disks = append(c.Disks, d)
		return nil
	}
}

// WithCDROM attaches an ISO image as a CD-ROM.
func WithCDROM(iso string) Option {
	return func(c *Config) error { c.CDROM = iso; return nil }
}

// WithBoot sets the firmware boot order (-boot order=…): "c" disk, "d"
// CD-ROM, "n" network.
func WithBoot(order string) Option {
	return func(c *Config) error { c.Boot = order; return nil }
}

// WithOVMF boots with UEFI firmware (Debian's ovmf package) instead of
// SeaBIOS. Each VM gets its own copy of the variable store.
func WithOVMF() Option {
	return func(c *Config) error { c.OVMF = true; return nil }
}

// WithSerialLog also writes the raw serial console to a file.
func WithSerialLog(path string) Option {
	return func(c *Config) error { c.SerialLog = path; return nil }
}

// WithConsoleOutput also copies the raw serial console to w.
func WithConsoleOutput(w io.Writer) Option {
	return func(c *Config) error { c.ConsoleOutput = w; return nil }
}

// WithExtraArgs appends raw QEMU arguments.
func WithExtraArgs(args ...string) Option {
	return func(c *Config) error { c.ExtraArgs = append(c.ExtraArgs, args...); return nil }
}

// WithUserNet adds a virtio NIC on user-mode networking with restrict=on
// (the guest reaches nothing outside; the forwards still work). Only
// WithUserNetConfig with UserNet.Egress gives the guest a way out.
func WithUserNet(forwards ...Forward) Option {
	return WithUserNetConfig(UserNet{Forwards: forwards})
}

// WithUserNetConfig is WithUserNet with a MAC address, PXE settings, guest
// forwards and, on a user's request only, egress.
func WithUserNetConfig(u UserNet) Option {
	return func(c *Config) error {
		for i, f := range u.Forwards {
			if f.Proto == "" {
				f.Proto = "tcp"
			}
			if f.Proto != "tcp" && f.Proto != "udp" {
				return fmt.Errorf("qemu: forward protocol %q", f.Proto)
			}
			if f.HostAddr == "" {
				f.HostAddr = "127.0.0.1"
			}
			if f.GuestPort <= 0 || f.GuestPort > 65535 || f.HostPort < 0 || f.HostPort > 65535 {
				return fmt.Errorf("qemu: bad forward %+v", f)
			}
			if net.ParseIP(f.HostAddr) == nil {
				return fmt.Errorf("qemu: forward host address %q is not an IP address", f.HostAddr)
			}
			u.Forwards[i] = f
		}
		if err := checkGuestForwards(u.GuestForwards); err != nil {
			return err
		}
		if u.TFTPRoot != "" {
			abs, err := filepath.Abs(u.TFTPRoot)
			if err != nil {
				return err
			}
			u.TFTPRoot = abs
		}
		c.nics = append(c.nics, netdev{kind: "user", user: u, mac: u.MAC})
		return nil
	}
}

// WithSocketNet adds a virtio NIC connected to an L2 hub listening on
// hubAddr (host:port, on loopback) with QEMU's stream netdev: Ethernet frames
// travel over TCP, each prefixed by its length as a 4-byte big-endian number.
// Give each VM on the same hub its own MAC.
func WithSocketNet(hubAddr string, mac string) Option {
	return func(c *Config) error {
		host, port, err := net.SplitHostPort(hubAddr)
		if err != nil {
			return fmt.Errorf("qemu: hub address %q: %w", hubAddr, err)
		}
		if host == "" {
			hubAddr = net.JoinHostPort("127.0.0.1", port)
		}
		c.nics = append(c.nics, netdev{kind: "stream", hub: hubAddr, mac: mac})
		return nil
	}
}

// WithTapNet adds a virtio NIC on an existing tap device (ip tuntap add
// NAME mode tap), e.g. one on a bridge in a test's network namespace
// (WithNetNS). QEMU runs no scripts on it: the caller wires it up.
func WithTapNet(ifname, mac string) Option {
	return func(c *Config) error {
		if ifname == "" || strings.ContainsAny(ifname, ", /") || len(ifname) > 15 {
			return fmt.Errorf("qemu: tap interface name %q", ifname)
		}
		c.nics = append(c.nics, netdev{kind: "tap", tap: ifname, mac: mac})
		return nil
	}
}

// WithNetNS runs QEMU inside the named network namespace ("ip netns exec
// NAME"), so that its tap devices, and any user-networking forwards, are
// that namespace's. Nothing else about the VM changes: the console and QMP
// are still this process's.
func WithNetNS(name string) Option {
	return func(c *Config) error {
		if name == "" || strings.ContainsAny(name, "/ ") {
			return fmt.Errorf("qemu: network namespace name %q", name)
		}
		c.NetNS = name
		return nil
	}
}

// defaultMAC is QEMU's own default MAC, plus the interface index.
func defaultMAC(i int) string { return fmt.Sprintf("52:54:00:12:34:%02x", 0x56+i) }

// KVMUsable reports whether VMs should run under KVM: $KILN_ACCEL=kvm or
// tcg decides; otherwise /dev/kvm must open for reading and writing and
// the CPU must show hardware virtualization (vmx or svm in /proc/cpuinfo).
// The second check matters: a VM without nested virtualization may still
// have a /dev/kvm, on which QEMU aborts ("failed to set MSR") or the guest
// hangs; TCG is slow but works there.
func KVMUsable() bool {
	switch os.Getenv("KILN_ACCEL") {
	case "kvm":
		return true
	case "tcg":
		return false
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	return err == nil && hasVirtFlag(string(cpuinfo))
}

// hasVirtFlag reports whether a /proc/cpuinfo text lists vmx or svm.
func hasVirtFlag(cpuinfo string) bool {
	for _, l := range strings.Split(cpuinfo, "\n") {
		name, flags, ok := strings.Cut(l, ":")
		if !ok || strings.TrimSpace(name) != "flags" {
			continue
		}
		for _, f := range strings.Fields(flags) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false // the first CPU speaks for all
	}
	return false
}

// DefaultBinary is the QEMU system emulator used when WithBinary is not given.
const DefaultBinary = "qemu-system-x86_64"

// Available returns nil when the QEMU binary is installed, and otherwise an
// error saying how to install it (for t.Skip).
func Available() error {
	if _, err := lookPath(DefaultBinary); err != nil {
		return fmt.Errorf("%s not found (run scripts/install-deps.sh): %w", DefaultBinary, err)
	}
	return nil
}
