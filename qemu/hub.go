package qemu

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
)

// Hub is an Ethernet switch for VMs on one host: each VM's NIC connects to
// it over TCP on loopback (WithSocketNet: QEMU's stream netdev, every
// frame prefixed by its length as a 4-byte big-endian number). QEMU's own
// socket listen= takes a single peer, so several VMs need this. It learns
// which peer has which MAC and floods broadcasts, multicasts and unknown
// destinations to every other peer. Nothing leaves the hub: the VMs reach
// each other and nothing else.
//
// Like a real switch, it never lets one port hold up the others: each
// peer has its own queue and writer, and a frame for a peer whose queue is
// full (a VM that is not reading: still booting, or starved of CPU under
// TCG) is dropped, as a congested port drops; TCP in the guests resends.
// Writing to peers in the reader's goroutine let one slow VM freeze the
// whole L2, the master's included.
type Hub struct {
	ln net.Listener

	mu    sync.Mutex
	peers map[*hubPeer]bool
	macs  map[[6]byte]*hubPeer
	wg    sync.WaitGroup
}

type hubPeer struct {
	conn net.Conn
	out  chan []byte // frames waiting for the writer
	done chan struct{}
	once sync.Once
}

// peerQueue is how many frames wait for one peer before more are dropped.
const peerQueue = 512

func newPeer(c net.Conn) *hubPeer {
	return &hubPeer{conn: c, out: make(chan []byte, peerQueue), done: make(chan struct{})}
}

// enqueue hands a copy of frame to the peer's writer, or drops it when
// the peer is behind.
func (p *hubPeer) enqueue(frame []byte) {
	f := append([]byte(nil), frame...)
	select {
	case p.out <- f:
	default: // congested: drop
	}
}

// write sends queued frames until the peer is closed.
func (p *hubPeer) write() {
	w := bufio.NewWriterSize(p.conn, 2*maxFrame)
	var hdr [4]byte
	for {
		var f []byte
		select {
		case f = <-p.out:
		case <-p.done:
			return
		}
		binary.BigEndian.PutUint32(hdr[:], uint32(len(f)))
		w.Write(hdr[:])
		w.Write(f)
		// Batch what is already queued into one write.
		for more := true; more; {
			select {
			case f = <-p.out:
				binary.BigEndian.PutUint32(hdr[:], uint32(len(f)))
				w.Write(hdr[:])
				w.Write(f)
			default:
				more = false
			}
		}
		if err := w.Flush(); err != nil {
			p.close()
			return
		}
	}
}

func (p *hubPeer) close() {
	p.once.Do(func() {
		close(p.done)
		p.conn.Close()
	})
}

// maxFrame is the largest frame the hub passes (jumbo frames included).
const maxFrame = 65536

// NewHub listens on 127.0.0.1 on a free port.
func NewHub() (*Hub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	h := &Hub{ln: ln, peers: map[*hubPeer]bool{}, macs: map[[6]byte]*hubPeer{}}
	h.wg.Add(1)
	go h.accept()
	return h, nil
}

// Addr is the address VMs connect to (WithSocketNet(h.Addr(), mac)).
func (h *Hub) Addr() string { return h.ln.Addr().String() }

// Peers is the number of connected NICs.
func (h *Hub) Peers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.peers)
}

// Close disconnects every peer and stops listening.
func (h *Hub) Close() error {
	err := h.ln.Close()
	h.mu.Lock()
	for p := range h.peers {
		p.close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	return err
}

func (h *Hub) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		p := newPeer(c)
		h.mu.Lock()
		h.peers[p] = true
		h.mu.Unlock()
		h.wg.Add(2)
		go h.serve(p)
		go func() {
			defer h.wg.Done()
			p.write()
		}()
	}
}

// serve reads a peer's frames until it disconnects or breaks the framing.
func (h *Hub) serve(p *hubPeer) {
	defer h.wg.Done()
	defer h.drop(p)
	r := bufio.NewReaderSize(p.conn, 2*maxFrame)
	var hdr [4]byte
	buf := make([]byte, maxFrame)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n < 14 || n > maxFrame {
			return // not Ethernet: a broken or foreign peer
		}
		frame := buf[:n]
		if _, err := io.ReadFull(r, frame); err != nil {
			return
		}
		h.forward(p, frame)
	}
}

func (h *Hub) forward(from *hubPeer, frame []byte) {
	var dst, src [6]byte
	copy(dst[:], frame[0:6])
	copy(src[:], frame[6:12])
	h.mu.Lock()
	if src[0]&1 == 0 {
		h.macs[src] = from
	}
	var targets []*hubPeer
	if to, ok := h.macs[dst]; ok && dst[0]&1 == 0 {
		if to != from {
			targets = []*hubPeer{to}
		}
	} else {
		for p := range h.peers {
			if p != from {
				targets = append(targets, p)
			}
		}
	}
	h.mu.Unlock()
	for _, t := range targets {
		t.enqueue(frame)
	}
}

func (h *Hub) drop(p *hubPeer) {
	p.close()
	h.mu.Lock()
	delete(h.peers, p)
	for mac, q := range h.macs {
		if q == p {
			delete(h.macs, mac)
		}
	}
	h.mu.Unlock()
}
