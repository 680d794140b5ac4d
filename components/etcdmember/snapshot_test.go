package etcdmember

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSnapshot(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	ctx := testContext(t)
	m1 := ca.member(t, "m1")
	ca.start(t, m1, "")
	cli := ca.client(t, m1)
	for i := range 100 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/registry/key-%d", i), strings.Repeat("v", 1000)); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	n, err := Snapshot(ctx, cli, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) || n < 100*1000 {
		t.Fatalf("Snapshot wrote %d bytes, returned %d; want all the keys", buf.Len(), n)
	}
	path := filepath.Join(t.TempDir(), "etcd.snapshot")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := VerifySnapshotFile(path); err != nil {
		t.Errorf("VerifySnapshotFile of a fresh snapshot: %v", err)
	}
	checkDamaged(t, buf.Bytes())
}

// checkDamaged checks that VerifySnapshot refuses every damaged copy of
// the sound snapshot good.
func checkDamaged(t *testing.T, good []byte) {
	t.Helper()
	db := good[:len(good)-sha256.Size]
	withSum := func(db []byte) []byte {
		sum := sha256.Sum256(db)
		return append(bytes.Clone(db), sum[:]...)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		return b
	}
	for _, tc := range []struct {
		name, data, want string
	}{
		{"cut short", string(good[:len(good)-100]), "it was cut short, or is not a snapshot"},
		{"cut by whole pages", string(good[:len(good)-4096]), "sha256 does not match"},
		{"flipped byte", string(flip(len(db) / 2)), "sha256 does not match"},
		{"flipped byte in the sha256", string(flip(len(good) - 1)), "sha256 does not match"},
		{"empty", "", "etcd snapshot of 0 bytes"},
		{"not bolt", string(withSum(make([]byte, 4*4096))), "not a bolt database"},
		{"bolt cut by whole pages, sha256 redone", string(withSum(db[:len(db)-4096])), "it was cut short"},
	} {
		err := VerifySnapshot(strings.NewReader(tc.data), int64(len(tc.data)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: VerifySnapshot = %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

func TestTrailingHash(t *testing.T) {
	data := make([]byte, 3*512)
	for i := range data {
		data[i] = byte(i * 7)
	}
	sum := sha256.Sum256(data)
	stream := append(bytes.Clone(data), sum[:]...)
	for _, chunk := range []int{1, 5, 31, 32, 33, 100, 4096} {
		h := &trailingHash{h: sha256.New()}
		for b := stream; len(b) > 0; {
			n := min(chunk, len(b))
			h.Write(b[:n])
			b = b[n:]
		}
		if !h.ok() {
			t.Errorf("written in chunks of %d: sha256 not recognised", chunk)
		}
		h = &trailingHash{h: sha256.New()}
		h.Write(stream[:len(stream)-1])
		if h.ok() {
			t.Errorf("a stream cut short passed")
		}
	}
}
