package etcdmember

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/fnv"
	"io"
	"os"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kiln/configs/nodeapi"
)

// Snapshot writes a point-in-time copy of the cluster's database to w in
// etcd's snapshot format, what `etcdctl snapshot save` writes and
// `etcdutl snapshot restore` reads: the bolt database followed by its
// sha256. It checks that sha256 as the stream arrives and returns the
// bytes written; on error, what w got is not a snapshot.
func Snapshot(ctx context.Context, cli *clientv3.Client, w io.Writer) (int64, error) {
	resp, err := cli.SnapshotWithVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("etcd snapshot: %w", err)
	}
	defer resp.Snapshot.Close()
	sum := &trailingHash{h: sha256.New()}
	n, err := io.Copy(io.MultiWriter(w, sum), resp.Snapshot)
	if err != nil {
		return n, fmt.Errorf("etcd snapshot: after %d bytes: %w", n, err)
	}
	if n%512 != sha256.Size {
		return n, fmt.Errorf("etcd snapshot: the stream of %d bytes is not a database followed by its sha256; take the snapshot again", n)
	}
	if !sum.ok() {
		return n, errors.New("etcd snapshot: the sha256 etcd sent does not match the database it sent; take the snapshot again")
	}
	return n, nil
}

// trailingHash hashes everything written to it but the last sha256.Size
// bytes, and keeps those: the sha256 etcd appends to a snapshot.
type trailingHash struct {
	h    hash.Hash
	tail []byte
}

func (t *trailingHash) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= sha256.Size {
		t.h.Write(t.tail)
		t.h.Write(p[:len(p)-sha256.Size])
		t.tail = append(t.tail[:0], p[len(p)-sha256.Size:]...)
		return n, nil
	}
	t.tail = append(t.tail, p...)
	if extra := len(t.tail) - sha256.Size; extra > 0 {
		t.h.Write(t.tail[:extra])
		t.tail = append(t.tail[:0], t.tail[extra:]...)
	}
	return n, nil
}

func (t *trailingHash) ok() bool {
	return len(t.tail) == sha256.Size && bytes.Equal(t.h.Sum(nil), t.tail)
}

// VerifySnapshotFile is VerifySnapshot of the file at path.
func VerifySnapshotFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if err := VerifySnapshot(f, info.Size()); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// VerifySnapshot checks a snapshot of size bytes read from r, as Snapshot
// writes it, without etcd: the sha256 at its end matches the rest (the
// host CLI's check, nodeapi.CheckSnapshotHash), and the rest is a whole
// bolt database (its meta page is sound, and the pages it counts are all
// there).
func VerifySnapshot(r io.ReaderAt, size int64) error {
	if err := nodeapi.CheckSnapshotHash(r, size); err != nil {
		return err
	}
	return checkBolt(r, size-sha256.Size)
}

// A bolt database (go.etcd.io/bbolt) starts with two meta pages; the
// meta with the highest transaction ID among the sound ones is current.
// Bolt writes them in the machine's byte order; every platform kiln
// builds for is little-endian.
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	boltPageHeader = 16 // page: id uint64, flags uint16, count uint16, overflow uint32
	boltMetaFlag   = 0x04
	boltMetaSize   = 64 // magic, version, pageSize, flags uint32; root bucket (2×uint64); freelist, pgid, txid, checksum uint64
	boltNoFreelist = ^uint64(0)
	boltMinPage    = 512
)

type boltMeta struct {
	pageSize                 uint32
	root, freelist, pgid, tx uint64
}

// checkBolt checks that the first size bytes of r are a whole bolt
// database.
func checkBolt(r io.ReaderAt, size int64) error {
	m0, err0 := readBoltMeta(r, 0)
	pageSize := int64(4096) // where bolt looks for the second meta when the first is unsound
	if err0 == nil {
		pageSize = int64(m0.pageSize)
	}
	m1, err1 := readBoltMeta(r, pageSize)
	var m boltMeta
	switch {
	case err0 == nil && (err1 != nil || m0.tx >= m1.tx):
		m = m0
	case err1 == nil:
		m = m1
	default:
		return fmt.Errorf("etcd snapshot: not a bolt database, or one whose meta pages are both damaged (%v; %v)", err0, err1)
	}
	if need := int64(m.pgid) * int64(m.pageSize); need > size || m.pgid < 2 {
		return fmt.Errorf("etcd snapshot: its database counts %d pages of %d bytes (%d bytes) and has %d: it was cut short", m.pgid, m.pageSize, need, size)
	}
	if m.root >= m.pgid || (m.freelist >= m.pgid && m.freelist != boltNoFreelist) {
		return errors.New("etcd snapshot: its database's meta page points past its end: the database is damaged")
	}
	return nil
}

// readBoltMeta reads and checks the meta page at offset off.
func readBoltMeta(r io.ReaderAt, off int64) (boltMeta, error) {
	buf := make([]byte, boltPageHeader+boltMetaSize)
	if _, err := r.ReadAt(buf, off); err != nil {
		return boltMeta{}, fmt.Errorf("meta page at %d: %w", off, err)
	}
	le := binary.LittleEndian
	if flags := le.Uint16(buf[8:]); flags != boltMetaFlag {
		return boltMeta{}, fmt.Errorf("page at %d is not a meta page (flags %#x)", off, flags)
	}
	meta := buf[boltPageHeader:]
	if magic := le.Uint32(meta[0:]); magic != boltMagic {
		return boltMeta{}, fmt.Errorf("no bolt magic at %d", off)
	}
	if v := le.Uint32(meta[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("bolt format version %d at %d, want %d", v, off, boltVersion)
	}
	sum := fnv.New64a()
	sum.Write(meta[:56])
	if got, want := le.Uint64(meta[56:]), sum.Sum64(); got != want {
		return boltMeta{}, fmt.Errorf("meta page at %d: checksum %#x, want %#x", off, got, want)
	}
	m := boltMeta{
		pageSize: le.Uint32(meta[8:]),
		root:     le.Uint64(meta[16:]),
		freelist: le.Uint64(meta[32:]),
		pgid:     le.Uint64(meta[40:]),
		tx:       le.Uint64(meta[48:]),
	}
	if m.pageSize < boltMinPage || m.pageSize&(m.pageSize-1) != 0 {
		return boltMeta{}, fmt.Errorf("meta page at %d: page size %d", off, m.pageSize)
	}
	return m, nil
}
