package pxe

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestLeaseTable(t *testing.T) {
	a := netip.MustParseAddr
	now := time.Unix(1_700_000_000, 0)
	lt := newLeaseTable(a("10.0.0.100"), a("10.0.0.103"), time.Hour, a("10.0.0.101"))
	lt.now = func() time.Time { return now }

	// First free address, skipping the excluded one.
	ip, err := lt.offer("m1", netip.Addr{}, netip.Addr{})
	if err != nil || ip != a("10.0.0.100") {
		t.Fatalf("offer m1: %v %v", ip, err)
	}
	if ip, _ := lt.offer("m2", netip.Addr{}, netip.Addr{}); ip != a("10.0.0.102") {
		t.Errorf("offer m2: %v", ip)
	}
	// The same client gets the same offer.
	if ip, _ := lt.offer("m1", netip.Addr{}, netip.Addr{}); ip != a("10.0.0.100") {
		t.Errorf("offer m1 again: %v", ip)
	}
	// A requested free address is honoured.
	if ip, _ := lt.offer("m3", netip.Addr{}, a("10.0.0.103")); ip != a("10.0.0.103") {
		t.Errorf("offer m3: %v", ip)
	}
	// Full.
	if _, err := lt.offer("m4", netip.Addr{}, netip.Addr{}); !errors.Is(err, errRangeFull) {
		t.Errorf("offer m4: %v", err)
	}
	// m1 binds its address; m2 may not take it.
	if l, ok := lt.ack("m1", netip.Addr{}, a("10.0.0.100")); !ok || !l.Bound || !l.Expiry.Equal(now.Add(time.Hour)) {
		t.Errorf("ack m1: %+v %v", l, ok)
	}
	if _, ok := lt.ack("m2", netip.Addr{}, a("10.0.0.100")); ok {
		t.Error("m2 got m1's address")
	}
	if _, ok := lt.ack("m2", netip.Addr{}, a("10.0.0.101")); ok {
		t.Error("m2 got the excluded address")
	}
	if _, ok := lt.ack("m2", netip.Addr{}, a("10.0.0.99")); ok {
		t.Error("m2 got an address outside the range")
	}
	// Offers not taken expire; bound leases do not (yet).
	now = now.Add(offerHold + time.Second)
	if ip, _ := lt.offer("m4", netip.Addr{}, netip.Addr{}); ip != a("10.0.0.102") {
		t.Errorf("offer m4 after the hold: %v", ip)
	}
	// A fixed address is given as it is.
	if ip, _ := lt.offer("m5", a("10.0.0.10"), netip.Addr{}); ip != a("10.0.0.10") {
		t.Errorf("fixed: %v", ip)
	}
	if _, ok := lt.ack("m5", a("10.0.0.10"), a("10.0.0.11")); ok {
		t.Error("fixed: acked another address")
	}
	// Release and decline.
	if !lt.release("m1", a("10.0.0.100")) {
		t.Error("release")
	}
	lt.decline("m4", a("10.0.0.102"))
	if ip, _ := lt.offer("m6", netip.Addr{}, a("10.0.0.102")); ip != a("10.0.0.100") {
		t.Errorf("after release and decline: %v", ip)
	}
	// An expired lease is reused once nothing else is free.
	lt.ack("m6", netip.Addr{}, a("10.0.0.100"))
	now = now.Add(2 * time.Hour)
	if ip, _ := lt.offer("m7", netip.Addr{}, netip.Addr{}); !ip.IsValid() {
		t.Error("no address after the leases expired")
	}
	// forget drops an offer, not a lease.
	lt.forget("m7")
	lt.ack("m8", netip.Addr{}, a("10.0.0.103"))
	lt.forget("m8")
	if ls := lt.list(); len(ls) == 0 {
		t.Error("forget dropped a bound lease")
	}
}
