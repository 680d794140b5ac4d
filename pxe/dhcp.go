package pxe

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/insomniacslk/dhcp/iana"
)

// DHCP ports.
const (
	dhcpServerPort = 67
	dhcpClientPort = 68
	// pxePort is where PXE clients send their proxyDHCP request once
	// they have an address (PXE spec 2.1).
	pxePort = 4011
)

// pxeVendorOptions is option 43 of replies to PXE clients:
// PXE_DISCOVERY_CONTROL (6) = 8, "boot the file named in this reply, no
// boot server discovery", then the end mark.
var pxeVendorOptions = []byte{6, 1, 8, 255}

// startDHCP listens on UDP 67 and 4011 of the interface only.
func (s *Server) startDHCP() error {
	if s.cfg.Interface == "" {
		return errors.New("DHCP without an interface")
	}
	for _, port := range []int{dhcpServerPort, pxePort} {
		// NewIPv4UDPConn binds to the device (SO_BINDTODEVICE): the
		// server never hears, nor answers, another interface.
		conn, err := server4.NewIPv4UDPConn(s.cfg.Interface, &net.UDPAddr{IP: net.IPv4zero, Port: port})
		if err != nil {
			return fmt.Errorf("DHCP on %s port %d: %w", s.cfg.Interface, port, err)
		}
		handler := s.handleDHCP
		if port == pxePort {
			handler = s.handlePXE
		}
		srv, err := server4.NewServer(s.cfg.Interface, nil, handler, server4.WithConn(conn),
			server4.WithLogger(dhcpLogger{s}))
		if err != nil {
			conn.Close()
			return err
		}
		s.closers = append(s.closers, srv.Close)
		name := fmt.Sprintf("dhcp port %d", port)
		s.serve(name, func() error {
			if err := srv.Serve(); !errors.Is(err, net.ErrClosed) {
				return err
			}
			return nil
		})
	}
	return nil
}

// dhcpLogger sends server4's messages (parse errors of malformed
// packets, mostly) to the debug log.
type dhcpLogger struct{ s *Server }

func (l dhcpLogger) Printf(format string, v ...any) {
	l.s.log.Debug("dhcp: " + fmt.Sprintf(format, v...))
}
func (l dhcpLogger) PrintMessage(prefix string, m *dhcpv4.DHCPv4) {
	l.s.log.Debug("dhcp: "+prefix, "message", m.Summary())
}

// clientInfo is what a DHCP request says about the booting client.
type clientInfo struct {
	pxe     bool // option 60 starts with "PXEClient"
	ipxe    bool // option 77 is "iPXE": the firmware already is iPXE
	arch    iana.Arch
	hasArch bool
}

func classify(m *dhcpv4.DHCPv4) clientInfo {
	ci := clientInfo{pxe: strings.HasPrefix(m.ClassIdentifier(), "PXEClient")}
	if archs := m.ClientArch(); len(archs) > 0 {
		ci.arch, ci.hasArch = archs[0], true
	}
	if uc := m.Options.Get(dhcpv4.OptionUserClassInformation); uc != nil {
		// iPXE sends the bare string; RFC 3004 clients length-prefix
		// each class.
		if string(uc) == "iPXE" {
			ci.ipxe = true
		}
		for _, c := range m.UserClass() {
			ci.ipxe = ci.ipxe || c == "iPXE"
		}
	}
	return ci
}

func (ci clientInfo) String() string {
	switch {
	case ci.ipxe:
		return "ipxe"
	case !ci.pxe:
		return "dhcp"
	case !ci.hasArch:
		return "pxe"
	}
	return "pxe/" + ci.arch.String()
}

// bootFile is what a client boots: the per-machine script URL for iPXE,
// an iPXE binary over TFTP for a PXE ROM.
func (s *Server) bootFile(ci clientInfo, mac net.HardwareAddr) (string, error) {
	if ci.ipxe {
		return s.BaseURL() + "/ipxe/" + macPath(mac), nil
	}
	arch := iana.INTEL_X86PC
	if ci.hasArch {
		arch = ci.arch
	}
	switch arch {
	case iana.INTEL_X86PC:
		return BIOSBootFile, nil
	case iana.EFI_X86_64, iana.EFI_BC:
		return UEFIBootFile, nil
	}
	return "", fmt.Errorf("client architecture %s (%d) is not supported (want BIOS or x86-64 UEFI)", arch, uint16(arch))
}

func ipOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

func zeroIP(ip net.IP) bool { return ip == nil || ip.IsUnspecified() }

// recoverHandler keeps a bug from taking the server down with one packet.
func (s *Server) recoverHandler(what string) {
	if r := recover(); r != nil {
		s.log.Error(what+": panic handling a packet", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
}

// validRequest filters what the DHCP handlers look at: Ethernet client
// requests.
func (s *Server) validRequest(port int, peer net.Addr, m *dhcpv4.DHCPv4) bool {
	if m.OpCode != dhcpv4.OpcodeBootRequest || m.HWType != iana.HWTypeEthernet || len(m.ClientHWAddr) != 6 {
		s.log.Debug("dhcp: ignored a packet that is not an Ethernet client request", "port", port, "from", peer.String())
		return false
	}
	if m.MessageType() == dhcpv4.MessageTypeNone {
		s.log.Debug("dhcp: ignored a BOOTP request (no message type)", "port", port, "mac", m.ClientHWAddr.String())
		return false
	}
	return true
}

// handleDHCP answers UDP 67.
func (s *Server) handleDHCP(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4) {
	defer s.recoverHandler("dhcp")
	if !s.validRequest(dhcpServerPort, peer, req) {
		return
	}
	mac := req.ClientHWAddr
	mt := req.MessageType()
	ci := classify(req)
	if s.cfg.DHCP == DHCPProxy {
		// The network's DHCP server gives the address; the PXE client
		// takes the boot file from our offer (or asks on port 4011).
		if mt == dhcpv4.MessageTypeRequest {
			// The request to that server names the address the
			// client is taking: remember it for the logs of TFTP
			// and HTTP.
			s.noteClient(ipOf(req.RequestedIPAddress()), mac)
		}
		if !ci.pxe || mt != dhcpv4.MessageTypeDiscover {
			return
		}
	}
	m, ok := s.machines.Lookup(mac)
	if !ok {
		s.log.Warn("dhcp: refused (unknown MAC address, no default in "+s.machines.Source+")",
			"mac", mac.String(), "type", mt.String(), "client", ci.String())
		return
	}
	var resp *dhcpv4.DHCPv4
	var err error
	if s.cfg.DHCP == DHCPProxy {
		resp, err = s.proxyReply(req, dhcpv4.MessageTypeOffer, m, ci)
	} else {
		resp, err = s.fullReply(req, m, ci)
	}
	if err != nil {
		s.log.Warn("dhcp: no answer", "mac", mac.String(), "type", mt.String(), "client", ci.String(), "host", m.Hostname, "reason", err.Error())
		return
	}
	if resp == nil {
		return
	}
	dest := replyAddr(req, resp)
	if _, err := conn.WriteTo(resp.ToBytes(), dest); err != nil {
		s.log.Warn("dhcp: sending the answer", "mac", mac.String(), "to", dest.String(), "error", err.Error())
		return
	}
	if resp.MessageType() == dhcpv4.MessageTypeAck && !zeroIP(resp.YourIPAddr) {
		s.noteClient(ipOf(resp.YourIPAddr), mac)
	}
	s.logReply(dhcpServerPort, req, resp, m, ci)
}

// handlePXE answers UDP 4011: the proxyDHCP request of a PXE client that
// has its address.
func (s *Server) handlePXE(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4) {
	defer s.recoverHandler("pxe")
	if !s.validRequest(pxePort, peer, req) {
		return
	}
	mac := req.ClientHWAddr
	mt := req.MessageType()
	ci := classify(req)
	if !ci.pxe || (mt != dhcpv4.MessageTypeRequest && mt != dhcpv4.MessageTypeInform) {
		s.log.Debug("dhcp: ignored on port 4011", "mac", mac.String(), "type", mt.String(), "client", ci.String())
		return
	}
	m, ok := s.machines.Lookup(mac)
	if !ok {
		s.log.Warn("dhcp: refused (unknown MAC address, no default in "+s.machines.Source+")",
			"mac", mac.String(), "type", mt.String(), "port", pxePort, "client", ci.String())
		return
	}
	resp, err := s.proxyReply(req, dhcpv4.MessageTypeAck, m, ci)
	if err != nil {
		s.log.Warn("dhcp: no answer", "mac", mac.String(), "port", pxePort, "client", ci.String(), "reason", err.Error())
		return
	}
	dest, _ := peer.(*net.UDPAddr)
	if dest == nil {
		return
	}
	if !zeroIP(req.ClientIPAddr) {
		dest = &net.UDPAddr{IP: req.ClientIPAddr, Port: dest.Port}
	}
	if _, err := conn.WriteTo(resp.ToBytes(), dest); err != nil {
		s.log.Warn("dhcp: sending the answer", "mac", mac.String(), "to", dest.String(), "error", err.Error())
		return
	}
	s.noteClient(ipOf(dest.IP), mac)
	s.logReply(pxePort, req, resp, m, ci)
}

func (s *Server) logReply(port int, req, resp *dhcpv4.DHCPv4, m Machine, ci clientInfo) {
	attrs := []any{"mac", req.ClientHWAddr.String(), "type", req.MessageType().String(), "client", ci.String(),
		"reply", resp.MessageType().String(), "host", m.Hostname, "role", string(m.Role)}
	if port != dhcpServerPort {
		attrs = append(attrs, "port", port)
	}
	if !zeroIP(resp.YourIPAddr) {
		attrs = append(attrs, "ip", resp.YourIPAddr.String())
	}
	if resp.BootFileName != "" {
		attrs = append(attrs, "file", resp.BootFileName)
	}
	if msg := resp.Message(); msg != "" {
		attrs = append(attrs, "message", msg)
	}
	s.log.Info("dhcp", attrs...)
}

// replyAddr is where an answer to UDP 67 goes (RFC 2131 4.1): the relay,
// the client's address when it has one, else broadcast.
func replyAddr(req, resp *dhcpv4.DHCPv4) *net.UDPAddr {
	switch {
	case !zeroIP(req.GatewayIPAddr):
		return &net.UDPAddr{IP: req.GatewayIPAddr, Port: dhcpServerPort}
	case resp.MessageType() == dhcpv4.MessageTypeNak:
	case !zeroIP(req.ClientIPAddr):
		return &net.UDPAddr{IP: req.ClientIPAddr, Port: dhcpClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpClientPort}
}

// proxyReply is a proxyDHCP offer or ack: boot information, no address.
func (s *Server) proxyReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, m Machine, ci clientInfo) (*dhcpv4.DHCPv4, error) {
	file, err := s.bootFile(ci, m.MAC)
	if err != nil {
		return nil, err
	}
	server := s.cfg.ServerIP.AsSlice()
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithYourIP(net.IPv4zero),
		dhcpv4.WithServerIP(server),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")),
		// UEFI clients want their machine identifier back.
		dhcpv4.WithOptionCopied(req, dhcpv4.OptionClientMachineIdentifier),
		dhcpv4.WithGeneric(dhcpv4.OptionVendorSpecificInformation, pxeVendorOptions),
	)
	if err != nil {
		return nil, err
	}
	resp.BootFileName = file
	return resp, nil
}

// fullReply answers a DHCP client as the network's DHCP server. A nil
// reply (and nil error) means no answer is due.
func (s *Server) fullReply(req *dhcpv4.DHCPv4, m Machine, ci clientInfo) (*dhcpv4.DHCPv4, error) {
	mac := req.ClientHWAddr.String()
	server := s.cfg.ServerIP
	var fixed netip.Addr
	if m.Address.IsValid() && s.subnet.Masked().Contains(m.Address.Addr()) {
		fixed = m.Address.Addr()
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		ip, err := s.leases.offer(mac, fixed, ipOf(req.RequestedIPAddress()))
		if err != nil {
			return nil, err
		}
		return s.leaseReply(req, dhcpv4.MessageTypeOffer, ip, m, ci)

	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && ipOf(sid) != server {
			// The client took another server's offer.
			s.leases.forget(mac)
			s.log.Info("dhcp: the client chose another server", "mac", mac, "server", sid.String())
			return nil, nil
		}
		want := ipOf(req.RequestedIPAddress())
		if !want.IsValid() || want.IsUnspecified() {
			want = ipOf(req.ClientIPAddr) // renewing or rebinding
		}
		if _, ok := s.leases.ack(mac, fixed, want); !ok {
			if !s.subnet.Masked().Contains(want) && req.ServerIdentifier() == nil {
				// INIT-REBOOT for another network: not ours to refuse.
				return nil, fmt.Errorf("requested %s, outside %s", want, s.subnet.Masked())
			}
			return dhcpv4.NewReplyFromRequest(req,
				dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server.AsSlice())),
				dhcpv4.WithOption(dhcpv4.OptMessage(fmt.Sprintf("%s is not yours", want))),
			)
		}
		return s.leaseReply(req, dhcpv4.MessageTypeAck, want, m, ci)

	case dhcpv4.MessageTypeInform:
		resp, err := s.leaseReply(req, dhcpv4.MessageTypeAck, netip.IPv4Unspecified(), m, ci)
		if resp != nil {
			resp.Options.Del(dhcpv4.OptionIPAddressLeaseTime)
		}
		return resp, err

	case dhcpv4.MessageTypeRelease:
		if s.leases.release(mac, ipOf(req.ClientIPAddr)) {
			s.log.Info("dhcp: released", "mac", mac, "ip", req.ClientIPAddr.String())
		}
		return nil, nil

	case dhcpv4.MessageTypeDecline:
		ip := ipOf(req.RequestedIPAddress())
		s.leases.decline(mac, ip)
		s.log.Warn("dhcp: declined (the address is in use by another host)", "mac", mac, "ip", ip.String())
		return nil, nil
	}
	return nil, nil
}

// leaseReply is an offer or ack of ip with the network's options, and the
// boot information for a PXE or iPXE client.
func (s *Server) leaseReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, ip netip.Addr, m Machine, ci clientInfo) (*dhcpv4.DHCPv4, error) {
	server := s.cfg.ServerIP.AsSlice()
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithYourIP(ip.AsSlice()),
		dhcpv4.WithServerIP(server),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
		dhcpv4.WithNetmask(net.CIDRMask(s.subnet.Bits(), 32)),
		dhcpv4.WithLeaseTime(uint32(s.cfg.LeaseTime.Seconds())),
		dhcpv4.WithOption(dhcpv4.OptHostName(m.Hostname)),
	}
	if s.cfg.Router.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(s.cfg.Router.AsSlice())))
	}
	if len(s.cfg.DNS) > 0 {
		var dns []net.IP
		for _, d := range s.cfg.DNS {
			dns = append(dns, d.AsSlice())
		}
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(dns...)))
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil, err
	}
	if ci.pxe || ci.ipxe {
		file, err := s.bootFile(ci, m.MAC)
		if err != nil {
			// The address still goes out: the machine may boot from
			// disk.
			s.log.Warn("dhcp: no boot file", "mac", m.MAC.String(), "client", ci.String(), "reason", err.Error())
		} else {
			resp.BootFileName = file
		}
	}
	return resp, nil
}
