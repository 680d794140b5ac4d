package pxe

import (
	"errors"
	"net/netip"
	"sort"
	"sync"
	"time"
)

// Lease is one entry of the DHCP lease table.
type Lease struct {
	MAC    string // 52:54:00:12:34:56
	IP     netip.Addr
	Expiry time.Time
	// Bound is false for an address offered but not yet requested.
	Bound bool
}

// Times of the lease table.
const (
	// offerHold is how long an offered address stays set aside for the
	// client it was offered to.
	offerHold = 30 * time.Second
	// declineHold is how long an address a client declined (someone
	// else answers ARP for it) is not offered.
	declineHold = 10 * time.Minute
)

var errRangeFull = errors.New("no free address in the DHCP range")

// leaseTable hands out the addresses of a range, in memory: a machine
// keeps its address as long as the server runs (renewals, reboots, the
// node's own DHCP client after PXE), and addresses of expired leases are
// given to others only when no never-used address is left.
type leaseTable struct {
	mu       sync.Mutex
	start    uint32
	end      uint32
	exclude  map[uint32]bool // the server, the router
	ttl      time.Duration
	byMAC    map[string]*Lease
	byIP     map[uint32]*Lease
	declined map[uint32]time.Time
	now      func() time.Time
}

func ip4(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func newLeaseTable(start, end netip.Addr, ttl time.Duration, exclude ...netip.Addr) *leaseTable {
	t := &leaseTable{
		start: ip4(start), end: ip4(end), ttl: ttl,
		exclude:  map[uint32]bool{},
		byMAC:    map[string]*Lease{},
		byIP:     map[uint32]*Lease{},
		declined: map[uint32]time.Time{},
		now:      time.Now,
	}
	for _, a := range exclude {
		if a.IsValid() && a.Is4() {
			t.exclude[ip4(a)] = true
		}
	}
	return t
}

func (t *leaseTable) inRange(a netip.Addr) bool {
	if !a.IsValid() || !a.Is4() {
		return false
	}
	v := ip4(a)
	return v >= t.start && v <= t.end
}

// free reports whether v may be given to mac.
func (t *leaseTable) free(v uint32, mac string, now time.Time) bool {
	if t.exclude[v] {
		return false
	}
	if until, ok := t.declined[v]; ok {
		if now.Before(until) {
			return false
		}
		delete(t.declined, v)
	}
	l := t.byIP[v]
	return l == nil || l.MAC == mac || now.After(l.Expiry)
}

// take gives v to mac, dropping whatever lease either had.
func (t *leaseTable) take(v uint32, mac string, bound bool, now time.Time) *Lease {
	if old := t.byIP[v]; old != nil && old.MAC != mac {
		delete(t.byMAC, old.MAC)
	}
	if old := t.byMAC[mac]; old != nil && ip4(old.IP) != v {
		delete(t.byIP, ip4(old.IP))
	}
	l := &Lease{MAC: mac, IP: addr4(v), Bound: bound}
	if bound {
		l.Expiry = now.Add(t.ttl)
	} else {
		l.Expiry = now.Add(offerHold)
		if old := t.byMAC[mac]; old != nil && old.Bound && old.IP == l.IP && old.Expiry.After(l.Expiry) {
			// Offering a client its own live lease keeps it bound.
			l.Expiry, l.Bound = old.Expiry, true
		}
	}
	t.byMAC[mac] = l
	t.byIP[v] = l
	return l
}

// offer picks an address for mac: its fixed address, else the one it
// has, else the one it asks for, else the first never-used one, else the
// first expired one.
func (t *leaseTable) offer(mac string, fixed, requested netip.Addr) (netip.Addr, error) {
	if fixed.IsValid() {
		return fixed, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if l := t.byMAC[mac]; l != nil && t.free(ip4(l.IP), mac, now) {
		return t.take(ip4(l.IP), mac, false, now).IP, nil
	}
	if t.inRange(requested) && t.free(ip4(requested), mac, now) {
		return t.take(ip4(requested), mac, false, now).IP, nil
	}
	var expired uint32
	for v := t.start; v >= t.start && v <= t.end; v++ {
		if !t.free(v, mac, now) {
			continue
		}
		if t.byIP[v] == nil {
			return t.take(v, mac, false, now).IP, nil
		}
		if expired == 0 {
			expired = v
		}
	}
	if expired != 0 {
		return t.take(expired, mac, false, now).IP, nil
	}
	return netip.Addr{}, errRangeFull
}

// ack binds a to mac if it may have it (a DHCPREQUEST): its fixed address,
// or a free address of the range.
func (t *leaseTable) ack(mac string, fixed, a netip.Addr) (*Lease, bool) {
	if fixed.IsValid() {
		if a != fixed {
			return nil, false
		}
		return &Lease{MAC: mac, IP: fixed, Bound: true, Expiry: t.now().Add(t.ttl)}, true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if !t.inRange(a) || !t.free(ip4(a), mac, now) {
		return nil, false
	}
	l := *t.take(ip4(a), mac, true, now)
	return &l, true
}

// forget drops mac's offer that was not taken (it chose another server).
func (t *leaseTable) forget(mac string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.byMAC[mac]; l != nil && !l.Bound {
		delete(t.byMAC, mac)
		delete(t.byIP, ip4(l.IP))
	}
}

// release ends mac's lease of a (DHCPRELEASE).
func (t *leaseTable) release(mac string, a netip.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.byMAC[mac]; l != nil && l.IP == a {
		delete(t.byMAC, mac)
		delete(t.byIP, ip4(a))
		return true
	}
	return false
}

// decline sets a aside: mac found it in use (DHCPDECLINE).
func (t *leaseTable) decline(mac string, a netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.byMAC[mac]; l != nil && l.IP == a {
		delete(t.byMAC, mac)
		delete(t.byIP, ip4(a))
	}
	if t.inRange(a) {
		t.declined[ip4(a)] = t.now().Add(declineHold)
	}
}

// list returns the table, by address.
func (t *leaseTable) list() []Lease {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Lease, 0, len(t.byIP))
	for _, l := range t.byIP {
		out = append(out, *l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}
