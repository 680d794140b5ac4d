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
	"kiln/configs/node"
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
	secretsKey                                           string
	images, dns                                          []string
	leaseTime                                            time.Duration
	noDHCP, verbose, allowMaster                         bool
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

Without --machines every machine boots the worker image. Every request is
logged with the machine's MAC address, the file, the bytes sent and the time
taken.

Each machine's node config carries its nodeSecret, the same at every boot:
its node name is bound to it at the first join, so no other machine can take
the name. It is the entry's own (nodeSecret: 16 to 256 characters in the
machines file), or else derived from the machine's MAC address and the key in
--secrets-key (HMAC-SHA256). That file (default: pxe-secrets.key next to the
machines file, or in ~/.local/state/kiln without one) is made at the first
start, 32 random bytes with mode 0600; one other users can read is refused.
Keep it and back it up: a new key changes every derived secret, and the
machines cannot rejoin under their names until an administrator frees them.
Secrets are never logged.

Each machine gets only its own role's kernel and initramfs and its own node
config; anything else is answered 403 (TFTP: access violation) and logged
as a warning with the client's address, MAC address and the file. TFTP and
HTTP requests carry no MAC address: a request is attributed to the MAC
address last seen with its source IP address in DHCP (or, for an address
DHCP has not shown, in the machine's request for its own script or
config). That keeps images from machines not meant to get them, not from
someone on the segment who forges addresses: serve on a network you trust.
A worker image holds the cluster's bootstrap token.

A master image holds every key of the cluster (CA, etcd CA, service-account
and encryption keys, an admin kubeconfig): it is served only with
--allow-master-image, only to machines the machines file lists as masters,
never by default.`,
		Example: `  kiln pxe serve --interface br0 --image out/master --image out/worker --machines machines.yaml --allow-master-image
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
	fl.StringVar(&f.machines, "machines", "", "machines file: MAC address → role, hostname, address, nodeSecret")
	fl.StringVar(&f.secretsKey, "secrets-key", "", "key file the machines' nodeSecrets are derived from, made if missing (default: "+
		pxe.DefaultSecretsKeyFile+" next to the machines file, else in $XDG_STATE_HOME/kiln or ~/.local/state/kiln)")
	fl.StringVar(&f.dhcpRange, "dhcp-range", "", "be the DHCP server for START-END (default: proxyDHCP)")
	fl.StringVar(&f.router, "router", "", "router handed out with --dhcp-range (and gateway of static machines without one)")
	fl.StringSliceVar(&f.dns, "dns", nil, "DNS servers handed out with --dhcp-range (and set for static machines)")
	fl.DurationVar(&f.leaseTime, "lease-time", pxe.DefaultLeaseTime, "DHCP lease time with --dhcp-range")
	fl.BoolVar(&f.noDHCP, "no-dhcp", false, "serve only TFTP and HTTP (another DHCP server points machines here)")
	fl.StringVar(&f.address, "address", "", "the server's address on the interface (default: its first IPv4 address)")
	fl.IntVar(&f.httpPort, "http-port", pxe.DefaultHTTPPort, "HTTP port")
	fl.IntVar(&f.tftpPort, "tftp-port", pxe.DefaultTFTPPort, "TFTP port (PXE ROMs use 69)")
	fl.StringVar(&f.ipxeDir, "ipxe-dir", pxe.DefaultIPXEDir, "directory with undionly.kpxe and ipxe.efi (apt-get install ipxe)")
	fl.BoolVar(&f.allowMaster, "allow-master-image", false, "serve a master image (it holds every key of the cluster) to the machines listed as masters")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "also log ignored and malformed packets")
	return c
}

// config turns the flags into a pxe.Config, without touching the network.
func (f pxeFlags) config() (pxe.Config, error) {
	cfg := pxe.Config{Interface: f.iface, LeaseTime: f.leaseTime, HTTPPort: f.httpPort, TFTPPort: f.tftpPort, IPXEDir: f.ipxeDir,
		DHCP: pxe.DHCPProxy, AllowMasterImage: f.allowMaster}
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
	// Before the network: refused whatever the rest says.
	if err := pxe.CheckMasterImage(cfg.Images, f.allowMaster); err != nil {
		return pxe.Config{}, err
	}
	if f.machines != "" {
		if cfg.Machines, err = pxe.LoadMachines(f.machines); err != nil {
			return pxe.Config{}, err
		}
	}
	keyPath, mkdir := f.secretsKey, false
	if keyPath == "" {
		if keyPath, err = pxe.DefaultSecretsKeyPath(f.machines); err != nil {
			return pxe.Config{}, err
		}
		mkdir = f.machines == "" // the state directory may not exist yet
	}
	if cfg.SecretsKey, err = pxe.LoadSecretsKey(keyPath, mkdir); err != nil {
		return pxe.Config{}, err
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
		if fi, err := os.Stat(img.Initramfs); err == nil && img.Role == node.RoleMaster && fi.Mode().Perm()&0o077 != 0 {
			fmt.Fprintf(w, "            warning: %s holds the cluster's keys and is readable by other users of this host (mode %04o): chmod 600 it\n",
				img.Initramfs, fi.Mode().Perm())
		}
	}
	ms := s.Machines()
	others := "refused"
	if ms.DefaultRole != "" {
		others = "boot the " + string(ms.DefaultRole) + " image"
	}
	fmt.Fprintf(w, "  machines  %d listed in %s; others %s\n", len(ms.List), ms.Source, others)
	fmt.Fprintf(w, "            each gets its own role's kernel and initramfs and its own config; other requests get 403\n")
	printSecretsSummary(w, ms, cfg.SecretsKey)
	for _, m := range ms.List {
		addr := "dhcp"
		if m.Address.IsValid() {
			addr = m.Address.String()
		}
		fmt.Fprintf(w, "            %s  %-7s %-20s %s\n", m.MAC, m.Role, m.Hostname, addr)
	}
	fmt.Fprintln(w, "Ctrl-C stops. Requests are logged on stderr.")
}

// printSecretsSummary says where the machines' nodeSecrets come from, and
// warns of a machines file holding secrets that others can read. It never
// prints a secret.
func printSecretsSummary(w io.Writer, ms *pxe.Machines, key *pxe.SecretsKey) {
	own := 0
	for _, m := range ms.List {
		if m.NodeSecret != "" {
			own++
		}
	}
	if own > 0 {
		fmt.Fprintf(w, "  secrets   each config carries the machine's nodeSecret: %d given in %s, the others derived from the MAC address with %s\n",
			own, ms.Source, key)
	} else {
		fmt.Fprintf(w, "  secrets   each config carries the machine's nodeSecret, derived from its MAC address with %s\n", key)
	}
	if key != nil && key.Created {
		fmt.Fprintf(w, "            created %s: back it up; a new key changes every derived nodeSecret (the machines then cannot rejoin under their names)\n", key.Path)
	}
	if fi, err := os.Stat(ms.Source); err == nil && own > 0 && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(w, "            warning: %s holds nodeSecrets and is readable by other users of this host (mode %04o): chmod 600 it\n",
			ms.Source, fi.Mode().Perm())
	}
}
