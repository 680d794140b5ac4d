package qemu

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

type fakeNIC struct {
	t   *testing.T
	c   net.Conn
	mac []byte
}

func dialHub(t *testing.T, h *Hub, last byte) *fakeNIC {
	t.Helper()
	c, err := net.Dial("tcp", h.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fakeNIC{t: t, c: c, mac: []byte{0x52, 0x54, 0, 0x99, 0, last}}
}

func (n *fakeNIC) send(dst []byte, payload string) {
	n.t.Helper()
	if err := n.write(dst, payload); err != nil {
		n.t.Fatal(err)
	}
}

// write sends one frame; safe from any goroutine.
func (n *fakeNIC) write(dst []byte, payload string) error {
	frame := append(append(append([]byte{}, dst...), n.mac...), 0x08, 0x00)
	frame = append(frame, payload...)
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(frame)))
	_, err := n.c.Write(append(hdr[:], frame...))
	return err
}

// recv returns the next frame's payload, or "" if none comes in time.
func (n *fakeNIC) recv() string {
	n.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var hdr [4]byte
	if _, err := io.ReadFull(n.c, hdr[:]); err != nil {
		return ""
	}
	frame := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(n.c, frame); err != nil {
		return ""
	}
	return string(frame[14:])
}

var broadcast = bytes.Repeat([]byte{0xff}, 6)

func TestHubFloodsThenSwitches(t *testing.T) {
	h, err := NewHub()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	a, b, c := dialHub(t, h, 1), dialHub(t, h, 2), dialHub(t, h, 3)
	for h.Peers() < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	a.send(broadcast, "who has")
	if b.recv() != "who has" || c.recv() != "who has" {
		t.Fatal("broadcast not flooded to every other peer")
	}
	if got := a.recv(); got != "" {
		t.Fatalf("sender got its own broadcast: %q", got)
	}
	// The hub has learnt a's MAC: b's answer goes to a only.
	b.send(a.mac, "is at")
	if got := a.recv(); got != "is at" {
		t.Fatalf("a got %q", got)
	}
	if got := c.recv(); got != "" {
		t.Fatalf("unicast leaked to c: %q", got)
	}
}

func TestHubDropsBrokenPeer(t *testing.T) {
	h, err := NewHub()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	bad, good := dialHub(t, h, 1), dialHub(t, h, 2)
	for h.Peers() < 2 {
		time.Sleep(10 * time.Millisecond)
	}
	bad.c.Write([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}) // a 4 GiB "frame"
	deadline := time.Now().Add(5 * time.Second)
	for h.Peers() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d peers, want the broken one dropped", h.Peers())
		}
		time.Sleep(10 * time.Millisecond)
	}
	other := dialHub(t, h, 3)
	for h.Peers() < 2 {
		time.Sleep(10 * time.Millisecond)
	}
	other.send(broadcast, "still switching")
	if got := good.recv(); got != "still switching" {
		t.Fatalf("after a broken peer: %q", got)
	}
}

// A VM that does not read (booting, starved under TCG) must not hold up
// the others: its frames are dropped, the rest keep flowing.
func TestHubSlowPeerDoesNotStallOthers(t *testing.T) {
	h, err := NewHub()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	a, b := dialHub(t, h, 1), dialHub(t, h, 2)
	_ = dialHub(t, h, 3) // never reads
	for h.Peers() < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	b.send(broadcast, "hello") // the hub learns b
	if a.recv() != "hello" {
		t.Fatal("no broadcast")
	}
	// Far more broadcast bytes than the silent peer's socket buffers hold.
	big := string(bytes.Repeat([]byte{'x'}, 1400))
	// Then a's unicast to b, again every 100 ms (a congested port may drop
	// one, as TCP in a guest would resend): it arrives while the silent
	// peer still reads nothing.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// Write errors end the sender (the old hub never reads a again; the
		// test's cleanup closes the connection).
		for range 20000 {
			if a.write(broadcast, big) != nil {
				return
			}
		}
		for a.write(b.mac, "last") == nil {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if got := b.recv(); got == "last" {
			return
		}
	}
	t.Fatal("b never got a's last frame: a peer that does not read stalled the hub")
}
