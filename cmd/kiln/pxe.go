package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/image"
	"kiln/pxe"
)

func pxeCommand() *cobra.Command {
	c := groupCommand(&cobra.Command{
		Use:   "pxe",
		Short: "Boot machines from the network: DHCP, TFTP and HTTP for built images",
		Long: `Boot machines from the network with the images "kiln build" made.

  kiln pxe serve   serve DHCP (proxy or full), TFTP and HTTP on one interface`,
	})
	c.AddCommand(pxeServeCommand())
	return c
}

type pxeFlags struct {
	iface, machines, dhcpRange, router, address, ipxeDir string
	images, dns                                          []string
	leaseTime                                            time.Duration
	noDHCP, verbose                                      bool
	httpPort, tftpPort                                   int
}

func pxeServeCommand() *cobra.Command {
	f := pxeFlags{}
	c := &cobra.Command{
		Use:   "serve --interface IF",
		Short: "Serve DHCP, TFTP and HTTP so machines on one interface boot kiln images",
		Long: `Serve network boot on one interface (a physical NIC, a bridge, a tap) until
Ctrl-C:

  DHCP  on UDP 67 and 4011 of that interface only (SO_BINDTODEVICE). By
        default proxyDHCP: the network's own DHCP server gives the addresses,
        kiln answers PXE clients with the boot file only. With --dhcp-range,
        kiln is the DHCP server: it hands out the range's addresses (leases
        kept in memory; a machine keeps its address while the server runs).
  TFTP  undionly.kpxe (BIOS) and ipxe.efi (x86-64 UEFI) from --ipxe-dir
        (Debian's ipxe package), for PXE ROMs that are not iPXE yet.
  HTTP  /ipxe/<mac> (or /boot.ipxe?mac=<mac>): the iPXE script that boots the
        machine's image; /images/<role>/{vmlinuz,initramfs.img}; and
        /config/<mac>.yaml, the machine's node config, which the node reads
        through kiln.config= on its kernel command line.

A machine's firmware asks DHCP, gets iPXE over TFTP, asks again as iPXE and
gets the URL of its script (QEMU's NIC ROMs are iPXE already and skip TFTP).

Which image a machine boots, its name and its address come from --machines:

  machines:
    52:54:00:12:34:56: {role: master, hostname: master-1, address: 10.0.0.10/24}
    52:54:00:12:34:57: {role: worker, hostname: worker-1}
  default: {role: worker}     # or "default: refuse": unknown machines get no answer

Without --machines every machine boots the worker image (or the only image
given). Every request is logged with the machine's MAC address, the file,
the bytes sent and the time taken.

Images and their node configs are served to anyone on the interface: a
worker image holds the cluster's bootstrap token. Serve on a network you
trust.`,
		Example: `  kiln pxe serve --interface br0 --image out/master --image out/worker --machines machines.yaml
  kiln pxe serve --interface eth1 --dhcp-range 10.0.0.100-10.0.0.199 --router 10.0.0.1`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runPXEServe(ctx, c.OutOrStdout(), c.ErrOrStderr(), f)
		},
	}
	fl := c.Flags()
	fl.StringVarP(&f.iface, "interface", "i", "", "network interface to serve on (required)")
	fl.StringArrayVar(&f.images, "image", nil, "image directory (kiln build --out), one per role; repeat for both (default: out/master and out/worker, those that exist)")
	fl.StringVar(&f.machines, "machines", "", "machines file: MAC address → role, hostname, address")
	fl.StringVar(&f.dhcpRange, "dhcp-range", "", "be the DHCP server for START-END (default: proxyDHCP)")
	fl.StringVar(&f.router, "router", "", "router handed out with --dhcp-range (and gateway of static machines without one)")
	fl.StringSliceVar(&f.dns, "dns", nil, "DNS servers handed out with --dhcp-range (and set for static machines)")
	fl.DurationVar(&f.leaseTime, "lease-time", pxe.DefaultLeaseTime, "DHCP lease time with --dhcp-range")
	fl.BoolVar(&f.noDHCP, "no-dhcp", false, "serve only TFTP and HTTP (another DHCP server points machines here)")
	fl.StringVar(&f.address, "address", "", "the server's address on the interface (default: its first IPv4 address)")
	fl.IntVar(&f.httpPort, "http-port", pxe.DefaultHTTPPort, "HTTP port")
	fl.IntVar(&f.tftpPort, "tftp-port", pxe.DefaultTFTPPort, "TFTP port (PXE ROMs use 69)")
	fl.StringVar(&f.ipxeDir, "ipxe-dir", pxe.DefaultIPXEDir, "directory with undionly.kpxe and ipxe.efi (apt-get install ipxe)")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "also log ignored and malformed packets")
	return c
}

// config turns the flags into a pxe.Config, without touching the network.
func (f pxeFlags) config() (pxe.Config, error) {
	cfg := pxe.Config{Interface: f.iface, LeaseTime: f.leaseTime, HTTPPort: f.httpPort, TFTPPort: f.tftpPort, IPXEDir: f.ipxeDir, DHCP: pxe.DHCPProxy}
	usage := func(format string, args ...any) (pxe.Config, error) {
		return pxe.Config{}, usageError{fmt.Errorf(format, args...)}
	}
	if f.iface == "" {
		return usage("--interface is required: DHCP runs on one interface only (e.g. --interface br0)")
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"--http-port", f.httpPort}, {"--tftp-port", f.tftpPort}} {
		if p.v < 1 || p.v > 65535 {
			return usage("%s %d: want a port from 1 to 65535", p.name, p.v)
		}
	}
	if f.httpPort == f.tftpPort {
		// Different protocols, but one number is a typo more often than not.
		return usage("--http-port and --tftp-port are both %d", f.httpPort)
	}
	if f.leaseTime < time.Minute {
		return usage("--lease-time %v: want at least 1m", f.leaseTime)
	}
	addr := func(flag, s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || !a.Is4() {
			return netip.Addr{}, usageError{fmt.Errorf("%s %q: want an IPv4 address", flag, s)}
		}
		return a, nil
	}
	var err error
	if f.address != "" {
		if cfg.ServerIP, err = addr("--address", f.address); err != nil {
			return pxe.Config{}, err
		}
	}
	if f.dhcpRange != "" {
		if f.noDHCP {
			return usage("--dhcp-range and --no-dhcp contradict each other")
		}
		a, b, ok := strings.Cut(f.dhcpRange, "-")
		if !ok {
			return usage("--dhcp-range %q: want START-END, e.g. 10.0.0.100-10.0.0.199", f.dhcpRange)
		}
		if cfg.RangeStart, err = addr("--dhcp-range", a); err != nil {
			return pxe.Config{}, err
		}
		if cfg.RangeEnd, err = addr("--dhcp-range", b); err != nil {
			return pxe.Config{}, err
		}
		if cfg.RangeEnd.Less(cfg.RangeStart) {
			return usage("--dhcp-range %q: the start is after the end", f.dhcpRange)
		}
		cfg.DHCP = pxe.DHCPFull
	} else if f.noDHCP {
		cfg.DHCP = pxe.DHCPOff
	}
	if f.router != "" {
		if cfg.Router, err = addr("--router", f.router); err != nil {
			return pxe.Config{}, err
		}
	}
	for _, d := range f.dns {
		a, err := addr("--dns", d)
		if err != nil {
			return pxe.Config{}, err
		}
		cfg.DNS = append(cfg.DNS, a)
	}

	dirs := f.images
	if len(dirs) == 0 {
		for _, d := range []string{"out/master", "out/worker"} {
			if _, err := os.Stat(filepath.Join(d, image.ManifestFile)); err == nil {
				dirs = append(dirs, d)
			}
		}
		if len(dirs) == 0 {
			return pxe.Config{}, errors.New("no image: out/master and out/worker hold none; build one (kiln build --role worker --format kernel,pxe) or give --image DIR")
		}
	}
	for _, d := range dirs {
		img, err := pxe.LoadImage(d)
		if err != nil {
			return pxe.Config{}, err
		}
		cfg.Images = append(cfg.Images, img)
	}
	if f.machines != "" {
		if cfg.Machines, err = pxe.LoadMachines(f.machines); err != nil {
			return pxe.Config{}, err
		}
	}
	return cfg, nil
}

func runPXEServe(ctx context.Context, stdout, stderr io.Writer, f pxeFlags) error {
	cfg, err := f.config()
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if f.verbose {
		level = slog.LevelDebug
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	s, err := pxe.New(cfg)
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		if errors.Is(err, fs.ErrPermission) || strings.Contains(err.Error(), "permission denied") {
			err = fmt.Errorf("%w (ports 67, 69 and 4011 need root or CAP_NET_BIND_SERVICE and CAP_NET_RAW)", err)
		}
		return err
	}
	printPXESummary(stdout, s, cfg)
	return s.Wait(ctx)
}

func printPXESummary(w io.Writer, s *pxe.Server, cfg pxe.Config) {
	where := s.ServerIP().String()
	if s.Subnet().IsValid() {
		where = s.Subnet().String()
	}
	fmt.Fprintf(w, "kiln pxe: serving on %s (%s)\n", cfg.Interface, where)
	switch s.Mode() {
	case pxe.DHCPProxy:
		fmt.Fprintf(w, "  dhcp      proxyDHCP on UDP 67 and 4011 of %s: boot files only, the network's DHCP server gives addresses\n", cfg.Interface)
	case pxe.DHCPFull:
		fmt.Fprintf(w, "  dhcp      DHCP server on %s: %s-%s, mask /%d", cfg.Interface, cfg.RangeStart, cfg.RangeEnd, s.Subnet().Bits())
		if cfg.Router.IsValid() {
			fmt.Fprintf(w, ", router %s", cfg.Router)
		}
		if len(cfg.DNS) > 0 {
			fmt.Fprintf(w, ", dns %v", cfg.DNS)
		}
		fmt.Fprintf(w, ", leases %v\n", cfg.LeaseTime)
	case pxe.DHCPOff:
		fmt.Fprintf(w, "  dhcp      off: point your DHCP server's next-server at %s\n", s.ServerIP())
	}
	files := s.TFTPFiles()
	fmt.Fprintf(w, "  tftp      %s: %s\n", s.TFTPAddr(), strings.Join(files, ", "))
	var missing []string
	for _, n := range []string{pxe.BIOSBootFile, pxe.UEFIBootFile} {
		if !slices.Contains(files, n) {
			missing = append(missing, filepath.Join(cfg.IPXEDir, n))
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(w, "            warning: no %s (apt-get install ipxe): only machines whose firmware is iPXE can boot\n", strings.Join(missing, ", "))
	}
	fmt.Fprintf(w, "  http      %s: /ipxe/<mac>, /images/<role>/{vmlinuz,initramfs.img}, /config/<mac>.yaml\n", s.BaseURL())
	for _, img := range s.Images() {
		fmt.Fprintf(w, "  image     %s %s from %s\n", img.Role, img.ID, img.Dir)
	}
	ms := s.Machines()
	others := "refused"
	if ms.DefaultRole != "" {
		others = "boot the " + string(ms.DefaultRole) + " image"
	}
	fmt.Fprintf(w, "  machines  %d listed in %s; others %s\n", len(ms.List), ms.Source, others)
	for _, m := range ms.List {
		addr := "dhcp"
		if m.Address.IsValid() {
			addr = m.Address.String()
		}
		fmt.Fprintf(w, "            %s  %-7s %-20s %s\n", m.MAC, m.Role, m.Hostname, addr)
	}
	fmt.Fprintln(w, "Ctrl-C stops. Requests are logged on stderr.")
}
