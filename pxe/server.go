// Package pxe is kiln's network boot server ("kiln pxe serve"): DHCP
// (proxyDHCP beside an existing DHCP server, or a full DHCP server for a
// range), TFTP for the iPXE binaries, and HTTP for the per-machine iPXE
// scripts, the images' kernels and initramfs, and the per-machine node
// configs.
//
// The boot of one machine: its firmware's PXE ROM asks DHCP; the server
// answers with undionly.kpxe (BIOS) or ipxe.efi (UEFI) over TFTP; iPXE
// asks DHCP again (user class "iPXE") and is given
// http://SERVER/ipxe/<mac>, a script that boots the machine's image with
// kiln.config=http://SERVER/config/<mac>.yaml on the kernel command line.
// A machine whose ROM is already iPXE (QEMU's) skips the TFTP step.
//
// Which image a machine boots, its name and its address come from a
// machines file (see Machines). DHCP only ever runs on the one interface
// it is given (SO_BINDTODEVICE); TFTP and HTTP listen on that interface's
// address.
//
// # Who gets what
//
// An image's kernel and initramfs (over HTTP and TFTP) go only to the
// machines the machines file gives that image's role, and a machine's node
// config only to that machine; every other request gets HTTP 403 or a TFTP
// access violation, and one warning in the log naming the client's address,
// its MAC address when known, and the file. A machine the file does not
// list gets the default's role; the default is never master, and the
// master image is served only to machines listed as masters, and only when
// the server is started with Config.AllowMasterImage (kiln pxe serve
// --allow-master-image): it holds every key of the cluster. The iPXE
// binaries and the per-machine scripts hold nothing secret and go to
// anyone. A node config holds the machine's nodeSecret, the same at every
// boot (Server.NodeSecret): the one the machines file gives it, or one
// derived from its MAC address and Config.SecretsKey. It is never logged.
//
// TFTP and HTTP requests carry no MAC address: the server attributes a
// request to the MAC address it last saw with the request's source IP
// address, learnt from DHCP (the address it leased, or the one a client
// asked the network's DHCP server for, in proxy mode) or, for an address
// DHCP has not tied to another MAC, from the machine's request for its own
// script (/ipxe/<mac>) or config. That is as strong as the network: it
// keeps images from machines that are not meant to get them, not from
// someone on the segment who forges MAC or IP addresses or asks for
// another machine's script from an address DHCP has not seen. Serve on a
// provisioning network you trust.
package pxe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"kiln/configs/node"
	"kiln/pxe/tftp"
)

// DHCPMode is how the server takes part in DHCP.
type DHCPMode string

const (
	// DHCPProxy answers PXE clients with boot information only, next to
	// the network's own DHCP server (which gives the addresses).
	DHCPProxy DHCPMode = "proxy"
	// DHCPFull is a DHCP server for a range of addresses, with the boot
	// information for PXE clients.
	DHCPFull DHCPMode = "full"
	// DHCPOff serves only TFTP and HTTP (another DHCP server points
	// machines here).
	DHCPOff DHCPMode = "off"
)

// Defaults.
const (
	DefaultIPXEDir   = "/usr/lib/ipxe"
	DefaultLeaseTime = time.Hour
	DefaultHTTPPort  = 8080
	DefaultTFTPPort  = 69
)

// iPXE binaries handed to PXE ROMs, from Debian's ipxe package.
const (
	BIOSBootFile = "undionly.kpxe"
	UEFIBootFile = "ipxe.efi"
)

// Config is what New needs.
type Config struct {
	// Interface is the network interface DHCP runs on, and whose
	// address TFTP and HTTP listen on. Required unless DHCP is off.
	Interface string
	// ServerIP is the address machines reach the server at: by default
	// the interface's first IPv4 address. Required without an interface.
	ServerIP netip.Addr
	// Images are the images served, at most one per role.
	Images []*Image
	// AllowMasterImage must be set to serve a master image: it holds
	// every key of the cluster (see CheckMasterImage).
	AllowMasterImage bool
	// Machines maps MAC addresses to machines; nil boots every machine
	// as a worker (New fails without a worker image then: the master
	// image goes only to machines listed as masters).
	Machines *Machines
	DHCP     DHCPMode
	// RangeStart and RangeEnd are the addresses of DHCPFull, in the
	// interface's network.
	RangeStart, RangeEnd netip.Addr
	// Router and DNS are handed out by DHCPFull (optional); DNS also
	// goes into the node config of machines with a static address.
	Router    netip.Addr
	DNS       []netip.Addr
	LeaseTime time.Duration
	// HTTPPort and TFTPPort: 0 picks a free port (tests).
	HTTPPort, TFTPPort int
	// IPXEDir holds undionly.kpxe and ipxe.efi (default /usr/lib/ipxe).
	IPXEDir string
	// SecretsKey derives each machine's nodeSecret (see NodeSecret), the
	// same at every boot: required (LoadSecretsKey).
	SecretsKey *SecretsKey
	// Log receives one record per request (default: discard).
	Log *slog.Logger
}

// Server is a running (or ready to run) PXE server.
type Server struct {
	cfg      Config
	log      *slog.Logger
	images   map[node.Role]*Image
	machines *Machines
	secrets  *SecretsKey
	subnet   netip.Prefix // of ServerIP on the interface; invalid without one
	leases   *leaseTable
	tftpFS   fs.FS

	// Set by Start.
	httpPort int
	tftpPort int
	httpSrv  *http.Server
	tftpSrv  *tftp.Server
	closers  []func() error
	closeMu  sync.Mutex
	errc     chan error
	wg       sync.WaitGroup

	mu      sync.Mutex
	clients map[netip.Addr]client // learnt from DHCP and HTTP: who may get what, and the logs
}

// client is the MAC address the server attributes an IP address to.
type client struct {
	mac net.HardwareAddr
	// dhcp: learnt from DHCP; else claimed by an HTTP request naming
	// the MAC address (its script or config).
	dhcp bool
}

// New checks the configuration and prepares a server; Start runs it.
func New(cfg Config) (*Server, error) {
	if cfg.DHCP == "" {
		cfg.DHCP = DHCPProxy
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = DefaultLeaseTime
	}
	if cfg.IPXEDir == "" {
		cfg.IPXEDir = DefaultIPXEDir
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, images: map[node.Role]*Image{}, clients: map[netip.Addr]client{}}

	switch cfg.DHCP {
	case DHCPProxy, DHCPFull, DHCPOff:
	default:
		return nil, fmt.Errorf("DHCP mode %q: want proxy, full or off", cfg.DHCP)
	}
	if cfg.Interface == "" && cfg.DHCP != DHCPOff {
		return nil, errors.New("no network interface given: DHCP runs on one interface only, name it")
	}
	if cfg.Interface != "" {
		if err := s.resolveInterface(); err != nil {
			return nil, err
		}
	}
	if !s.cfg.ServerIP.IsValid() {
		return nil, errors.New("no server address: give an interface with an IPv4 address, or the address")
	}

	if len(cfg.Images) == 0 {
		return nil, errors.New("no image to serve (build one with \"kiln build\", then give --image out/<role>)")
	}
	if err := CheckMasterImage(cfg.Images, cfg.AllowMasterImage); err != nil {
		return nil, err
	}
	for _, img := range cfg.Images {
		if other, dup := s.images[img.Role]; dup {
			return nil, fmt.Errorf("two %s images: %s and %s (one per role)", img.Role, other.Dir, img.Dir)
		}
		s.images[img.Role] = img
	}
	s.machines = cfg.Machines
	if s.machines == nil {
		if _, ok := s.images[node.RoleWorker]; !ok {
			return nil, fmt.Errorf("no machines file: every machine would boot the master image (%s), which goes only to machines listed as masters; "+
				"give --machines with the master's MAC address (role: master)", s.images[node.RoleMaster].Dir)
		}
		s.machines = DefaultMachines(node.RoleWorker)
	}
	if s.machines.DefaultRole == node.RoleMaster {
		return nil, fmt.Errorf("%s: the default is master: unknown machines never get the master image (it holds every key of the cluster); "+
			"list each master by its MAC address, and give the default worker or refuse", s.machines.Source)
	}
	for _, r := range s.machines.Roles() {
		if _, ok := s.images[r]; !ok {
			return nil, fmt.Errorf("%s boots %s machines, but no %s image is given (--image out/%s)", s.machines.Source, r, r, r)
		}
	}
	if img, ok := s.images[node.RoleMaster]; ok && !slices.Contains(s.machines.Roles(), node.RoleMaster) {
		return nil, fmt.Errorf("%s lists no master, so the master image %s would go to no machine: list the master's MAC address with role: master, or leave that image out",
			s.machines.Source, img.Dir)
	}

	if cfg.DHCP == DHCPFull {
		if err := s.checkRange(); err != nil {
			return nil, err
		}
		// The machines' static addresses are never handed to others.
		exclude := []netip.Addr{s.cfg.ServerIP, cfg.Router}
		for _, m := range s.machines.List {
			if m.Address.IsValid() {
				exclude = append(exclude, m.Address.Addr())
			}
		}
		s.leases = newLeaseTable(cfg.RangeStart, cfg.RangeEnd, cfg.LeaseTime, exclude...)
	} else if cfg.RangeStart.IsValid() || cfg.RangeEnd.IsValid() {
		return nil, fmt.Errorf("a DHCP range is given with DHCP mode %s (it needs full)", cfg.DHCP)
	}

	if cfg.SecretsKey == nil {
		return nil, errors.New("no secrets key: each machine's nodeSecret is derived from it (LoadSecretsKey)")
	}
	s.secrets = cfg.SecretsKey

	files := mapFS{}
	for _, name := range []string{BIOSBootFile, UEFIBootFile, "snponly.efi"} {
		p := filepath.Join(cfg.IPXEDir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			files[name] = p
		}
	}
	for role, img := range s.images {
		files["images/"+string(role)+"/"+kernelFile] = img.Kernel
		files["images/"+string(role)+"/"+initramfsFile] = img.Initramfs
	}
	s.tftpFS = files
	return s, nil
}

// resolveInterface finds the server's address and network on the
// interface.
func (s *Server) resolveInterface() error {
	ifc, err := net.InterfaceByName(s.cfg.Interface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", s.cfg.Interface, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return fmt.Errorf("interface %s: %w", s.cfg.Interface, err)
	}
	var found []netip.Prefix
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok || !ip.Unmap().Is4() {
			continue
		}
		ones, _ := ipn.Mask.Size()
		found = append(found, netip.PrefixFrom(ip.Unmap(), ones))
	}
	if len(found) == 0 {
		return fmt.Errorf("interface %s has no IPv4 address (give it one, e.g. ip addr add 10.0.0.1/24 dev %s)", s.cfg.Interface, s.cfg.Interface)
	}
	if !s.cfg.ServerIP.IsValid() {
		// With a DHCP range, the address whose network holds it.
		s.subnet = found[0]
		for _, p := range found {
			if s.cfg.RangeStart.IsValid() && p.Masked().Contains(s.cfg.RangeStart) {
				s.subnet = p
				break
			}
		}
		s.cfg.ServerIP = s.subnet.Addr()
		return nil
	}
	for _, p := range found {
		if p.Addr() == s.cfg.ServerIP {
			s.subnet = p
			return nil
		}
	}
	return fmt.Errorf("%s is not an address of interface %s", s.cfg.ServerIP, s.cfg.Interface)
}

func (s *Server) checkRange() error {
	a, b := s.cfg.RangeStart, s.cfg.RangeEnd
	if !a.IsValid() || !b.IsValid() {
		return errors.New("full DHCP needs a range (--dhcp-range 10.0.0.100-10.0.0.199)")
	}
	if !a.Is4() || !b.Is4() || b.Less(a) {
		return fmt.Errorf("DHCP range %s-%s: want two IPv4 addresses, the lower first", a, b)
	}
	if !s.subnet.IsValid() {
		return errors.New("full DHCP needs an interface")
	}
	net := s.subnet.Masked()
	if !net.Contains(a) || !net.Contains(b) {
		return fmt.Errorf("DHCP range %s-%s is not inside %s's network %s", a, b, s.cfg.Interface, net)
	}
	if a == net.Addr() || b == lastAddr(net) {
		return fmt.Errorf("DHCP range %s-%s holds the network's or the broadcast address", a, b)
	}
	if s.cfg.Router.IsValid() && !net.Contains(s.cfg.Router) {
		return fmt.Errorf("router %s is not in %s", s.cfg.Router, net)
	}
	return nil
}

// ServerIP is the address machines reach the server at.
func (s *Server) ServerIP() netip.Addr { return s.cfg.ServerIP }

// Subnet is the server's network on its interface (invalid without one).
func (s *Server) Subnet() netip.Prefix { return s.subnet }

// Machines is the machine table in use.
func (s *Server) Machines() *Machines { return s.machines }

// Images lists the images served.
func (s *Server) Images() []*Image { return s.cfg.Images }

// Mode is the DHCP mode.
func (s *Server) Mode() DHCPMode { return s.cfg.DHCP }

// BaseURL is the HTTP server's URL (after Start).
func (s *Server) BaseURL() string {
	return "http://" + netip.AddrPortFrom(s.cfg.ServerIP, uint16(s.httpPort)).String()
}

// TFTPAddr is the TFTP server's address (after Start).
func (s *Server) TFTPAddr() netip.AddrPort {
	return netip.AddrPortFrom(s.cfg.ServerIP, uint16(s.tftpPort))
}

// TFTPFiles lists the names TFTP serves, sorted.
func (s *Server) TFTPFiles() []string {
	m, _ := s.tftpFS.(mapFS)
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Leases lists the DHCP leases (full DHCP only).
func (s *Server) Leases() []Lease {
	if s.leases == nil {
		return nil
	}
	return s.leases.list()
}

// Start opens every socket, then serves in the background until Close.
// Everything that depends on the network namespace (interface look-ups,
// sockets) happens in New and Start.
func (s *Server) Start() error {
	s.errc = make(chan error, 4)
	fail := func(err error) error {
		s.Close()
		return err
	}
	hl, err := net.Listen("tcp", netip.AddrPortFrom(s.cfg.ServerIP, uint16(s.cfg.HTTPPort)).String())
	if err != nil {
		return fail(fmt.Errorf("HTTP: %w", err))
	}
	s.httpPort = hl.Addr().(*net.TCPAddr).Port
	// No write timeout: a slow (emulated) machine may take minutes
	// to fetch a large initramfs.
	s.httpSrv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	s.closers = append(s.closers, func() error { return s.httpSrv.Close() })
	s.serve("http", func() error {
		if err := s.httpSrv.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})

	tl, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.cfg.ServerIP, uint16(s.cfg.TFTPPort))))
	if err != nil {
		return fail(fmt.Errorf("TFTP: %w", err))
	}
	s.tftpPort = tl.LocalAddr().(*net.UDPAddr).Port
	s.tftpSrv = &tftp.Server{FS: s.tftpFS, Allow: s.allowTFTP, Log: s.logTFTP}
	s.closers = append(s.closers, s.tftpSrv.Close)
	s.serve("tftp", func() error {
		if err := s.tftpSrv.Serve(tl); !errors.Is(err, tftp.ErrServerClosed) {
			return err
		}
		return nil
	})

	if s.cfg.DHCP != DHCPOff {
		if err := s.startDHCP(); err != nil {
			return fail(err)
		}
	}
	return nil
}

// serve runs a listener's loop; its error (nil after Close) goes to Wait.
func (s *Server) serve(name string, loop func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := loop(); err != nil {
			s.errc <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

// Wait blocks until ctx is done or a listener fails, then closes the
// server. It returns the listener's error, or nil.
func (s *Server) Wait(ctx context.Context) error {
	var err error
	select {
	case <-ctx.Done():
	case err = <-s.errc:
	}
	s.Close()
	return err
}

// Close stops every listener and waits for them.
func (s *Server) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
	s.wg.Wait()
	return nil
}

// noteClient remembers the MAC address DHCP saw with an IP address: TFTP
// and HTTP requests from that address are attributed to it.
func (s *Server) noteClient(ip netip.Addr, mac net.HardwareAddr) {
	s.setClient(ip, mac, true)
}

// claimClient ties an IP address to the MAC address an HTTP request from
// it names (its script or its config), unless DHCP tied the address to
// another MAC address. It returns that other address when it does not.
func (s *Server) claimClient(ip netip.Addr, mac net.HardwareAddr) (dhcpMAC net.HardwareAddr) {
	return s.setClient(ip, mac, false)
}

func (s *Server) setClient(ip netip.Addr, mac net.HardwareAddr, dhcp bool) net.HardwareAddr {
	if !ip.IsValid() || ip.IsUnspecified() || len(mac) == 0 {
		return nil
	}
	ip = ip.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[ip]; ok && !dhcp && c.dhcp {
		if bytes.Equal(c.mac, mac) {
			return nil // already known, from DHCP: stays so
		}
		return c.mac
	}
	if len(s.clients) > 4096 {
		clear(s.clients)
	}
	s.clients[ip] = client{mac: mac, dhcp: dhcp}
	return nil
}

// macOf returns the MAC address a request from ip is attributed to, or
// nil.
func (s *Server) macOf(ip netip.Addr) net.HardwareAddr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clients[ip.Unmap()].mac
}

// macString is macOf as text ("" if unknown), for the logs.
func (s *Server) macString(ip netip.Addr) string {
	if mac := s.macOf(ip); mac != nil {
		return mac.String()
	}
	return ""
}

// allowImage says whether the client at ip may have the boot files of the
// role's image: its MAC address (attributed as noteClient and claimClient
// say) must be one the machines file gives that role; the master image
// never goes to a machine booted by the default. The reason says why not.
func (s *Server) allowImage(ip netip.Addr, role node.Role) (ok bool, reason string) {
	mac := s.macOf(ip)
	if mac == nil {
		return false, "no MAC address known for " + ip.String() + " (kiln learns it from DHCP, or from the machine's request for its /ipxe/<mac> script)"
	}
	m, known := s.machines.Lookup(mac)
	switch {
	case !known:
		return false, s.refusedReason(mac)
	case m.Role != role:
		return false, fmt.Sprintf("%s (%s) boots the %s image, not the %s image", mac, m.Hostname, m.Role, role)
	case role == node.RoleMaster && m.Default:
		return false, "the master image goes only to machines listed as masters in " + s.machines.Source
	}
	return true, ""
}

// refusedReason says why the machines file refuses mac.
func (s *Server) refusedReason(mac net.HardwareAddr) string {
	if err := checkUnicast(mac); err != nil && s.machines.DefaultRole != "" {
		return err.Error()
	}
	return mac.String() + " is not in " + s.machines.Source + ", which refuses unknown machines"
}

// allowConfig says whether the client at ip may have machine m's node
// config: only m itself may.
func (s *Server) allowConfig(ip netip.Addr, m Machine) (ok bool, reason string) {
	mac := s.macOf(ip)
	switch {
	case mac == nil:
		return false, "no MAC address known for " + ip.String()
	case !bytes.Equal(mac, m.MAC):
		return false, fmt.Sprintf("the config of %s goes only to that machine, and %s is %s", m.MAC, ip, mac)
	}
	return true, ""
}

// allowTFTP refuses the boot files of an image to machines of another
// role (the iPXE binaries go to anyone).
func (s *Server) allowTFTP(c netip.AddrPort, file string) error {
	rest, ok := strings.CutPrefix(file, "images/")
	if !ok {
		return nil
	}
	role, _, _ := strings.Cut(rest, "/")
	if _, ok := s.images[node.Role(role)]; !ok {
		return nil
	}
	if ok, reason := s.allowImage(c.Addr(), node.Role(role)); !ok {
		return errors.New(reason)
	}
	return nil
}

func (s *Server) logTFTP(t tftp.Transfer) {
	attrs := []any{
		"client", t.Client.Addr().String(), "mac", s.macString(t.Client.Addr()), "file", t.File,
		"bytes", t.Bytes, "size", t.Size, "blksize", t.BlockSize, "duration", t.Duration.Round(time.Millisecond),
	}
	if t.Retransmits > 0 {
		attrs = append(attrs, "retransmits", t.Retransmits)
	}
	var re *tftp.RemoteError
	var te *tftp.Error
	switch {
	case errors.As(t.Err, &te) && te.Code == tftp.ErrAccess:
		s.log.Warn("tftp", append(attrs, "error", "refused: "+te.Message)...)
		return
	case errors.As(t.Err, &re) && t.Bytes == 0:
		// UEFI firmware asks for tsize, then aborts the transfer
		// once it has the size: not a failure.
		s.log.Info("tftp", append(attrs, "ended_by_client", re.Message)...)
		return
	case t.Err != nil:
		s.log.Warn("tftp", append(attrs, "error", t.Err.Error())...)
		return
	}
	s.log.Info("tftp", attrs...)
}

// mapFS serves a fixed set of host files under chosen names.
type mapFS map[string]string

func (m mapFS) Open(name string) (fs.File, error) {
	p, ok := m[name]
	if !ok || !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return os.Open(p)
}
