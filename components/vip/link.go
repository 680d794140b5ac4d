package vip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is the VIP on a Linux node: a /32 on the interface that carries
// the node's own address on the VIP's network, announced by gratuitous
// ARP. A /32, not the network's prefix length: the node's own address
// keeps its route and stays the source of what the node sends on that
// network; the VIP only receives. It needs CAP_NET_ADMIN and CAP_NET_RAW
// (the node's components run as root). Its methods act on the network
// namespace of the calling thread.
type Link struct {
	VIP    netip.Addr
	NodeIP netip.Addr // the interface that carries it is preferred
	name   string
}

var _ Address = (*Link)(nil)

// NewLink finds the interface for vip, and fails with what is wrong when
// the node has none on its network.
func NewLink(vip, nodeIP netip.Addr) (*Link, error) {
	if !vip.Is4() {
		return nil, fmt.Errorf("%s: the virtual IP must be an IPv4 address", vip)
	}
	l := &Link{VIP: vip, NodeIP: nodeIP}
	ln, err := l.link()
	if err != nil {
		return nil, err
	}
	l.name = ln.Attrs().Name
	return l, nil
}

func (l *Link) String() string {
	if l.name == "" {
		return l.VIP.String()
	}
	return l.VIP.String() + " on " + l.name
}

// link is the interface with an address whose network holds the VIP
// (the VIP's own /32 aside): the one of the node's address first.
func (l *Link) link() (netlink.Link, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	var found netlink.Link
	var have []string
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		if !ok || ip == l.VIP || ip.IsLoopback() {
			continue
		}
		p := netip.PrefixFrom(ip, ones)
		have = append(have, p.String())
		if !p.Masked().Contains(l.VIP) {
			continue
		}
		ln, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("interface %d of %s: %w", a.LinkIndex, p, err)
		}
		if ip == l.NodeIP {
			return ln, nil
		}
		if found == nil {
			found = ln
		}
	}
	if found == nil {
		return nil, fmt.Errorf("the virtual IP %s is on none of this node's networks (%s): it must be a free address on the network of the masters' node addresses (controlPlane.vip)", l.VIP, strings.Join(have, ", "))
	}
	return found, nil
}

func (l *Link) addr() *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(l.VIP.AsSlice()), Mask: net.CIDRMask(32, 32)}}
}

// Add puts the VIP on its interface (replacing it if there: no error).
func (l *Link) Add() error {
	ln, err := l.link()
	if err != nil {
		return err
	}
	l.name = ln.Attrs().Name
	if err := netlink.AddrReplace(ln, l.addr()); err != nil {
		return fmt.Errorf("adding %s/32 to %s: %w", l.VIP, ln.Attrs().Name, err)
	}
	return nil
}

// Remove takes the VIP off every interface that has it.
func (l *Link) Remove() error {
	on, err := l.holders()
	if err != nil {
		return err
	}
	var errs []error
	for _, ln := range on {
		if err := netlink.AddrDel(ln, l.addr()); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("removing %s from %s: %w", l.VIP, ln.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// Held reports whether the VIP is on one of the node's interfaces.
func (l *Link) Held() (bool, error) {
	on, err := l.holders()
	return len(on) > 0, err
}

// holders are the interfaces that carry the VIP as a /32.
func (l *Link) holders() ([]netlink.Link, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	var out []netlink.Link
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if ones, _ := a.Mask.Size(); !ok || ip != l.VIP || ones != 32 {
			continue
		}
		ln, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("interface %d: %w", a.LinkIndex, err)
		}
		out = append(out, ln)
	}
	return out, nil
}

// Announce broadcasts one gratuitous ARP for the VIP from the interface
// that carries it: the machines on the network that knew the VIP at
// another MAC address (the holder before) update their caches now.
func (l *Link) Announce() error {
	on, err := l.holders()
	if err != nil {
		return err
	}
	if len(on) == 0 {
		return fmt.Errorf("%s is on no interface", l.VIP)
	}
	ln := on[0]
	mac := ln.Attrs().HardwareAddr
	if len(mac) != 6 {
		return fmt.Errorf("%s has no Ethernet address to announce %s from", ln.Attrs().Name, l.VIP)
	}
	return sendARP(ln.Attrs().Index, GratuitousARP(mac, l.VIP))
}

// ARP's numbers (RFC 826).
const (
	arpEthernet = 1
	arpRequest  = 1
	arpLen      = 28 // an ARP packet for IPv4 over Ethernet
)

// GratuitousARP is an ARP request for ip from ip at mac, the target
// hardware address unknown (zeros): the form Linux's own announcements
// and arping -U send. A Linux receiver that has ip in its cache takes the
// new address whatever its arp_accept (the sender and target addresses
// are the same: a gratuitous ARP overrides the cache's lock time), and
// switches learn the MAC address on the new port from the frame.
func GratuitousARP(mac net.HardwareAddr, ip netip.Addr) []byte {
	b := make([]byte, arpLen)
	binary.BigEndian.PutUint16(b[0:], arpEthernet)
	binary.BigEndian.PutUint16(b[2:], unix.ETH_P_IP)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], arpRequest)
	a := ip.As4()
	copy(b[8:14], mac)
	copy(b[14:18], a[:])
	copy(b[24:28], a[:])
	return b
}

// sendARP broadcasts an ARP packet on the interface: an AF_PACKET
// datagram socket, the kernel writing the Ethernet header (broadcast
// destination, ethertype ARP). The socket receives nothing (protocol 0).
func sendARP(ifindex int, pkt []byte) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifindex, Halen: 6}
	copy(sa.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if err := unix.Sendto(fd, pkt, 0, sa); err != nil {
		return fmt.Errorf("sending ARP: %w", err)
	}
	return nil
}

// htons is a 16-bit number in network order as the host reads it.
func htons(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}
