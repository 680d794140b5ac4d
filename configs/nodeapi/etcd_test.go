package nodeapi

import (
	"bytes"
	"crypto/sha256"
	"strings"
	"testing"
)

func TestCheckSnapshotHash(t *testing.T) {
	db := bytes.Repeat([]byte("kiln"), 1024) // 4096 bytes: 8 pages
	sum := sha256.Sum256(db)
	good := append(bytes.Clone(db), sum[:]...)
	if err := CheckSnapshotHash(bytes.NewReader(good), int64(len(good))); err != nil {
		t.Fatalf("a good snapshot: %v", err)
	}
	flipped := bytes.Clone(good)
	flipped[100] ^= 1
	for name, c := range map[string]struct {
		data []byte
		want string
	}{
		"flipped":   {flipped, "damaged"},
		"truncated": {good[:len(good)-600], "truncated"},
		"no hash":   {db, "truncated"},
	} {
		err := CheckSnapshotHash(bytes.NewReader(c.data), int64(len(c.data)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

func TestWriteEtcdMembers(t *testing.T) {
	var b strings.Builder
	WriteEtcdMembers(&b, []EtcdMember{
		{ID: "8e9e05c52164694d", Name: "kiln-master", PeerURLs: []string{"https://10.120.0.10:2380"}, Healthy: true, Leader: true},
		{ID: "91bc3c398fb3c146", Name: "kiln-master-2", PeerURLs: []string{"https://10.120.0.11:2380"}, Learner: true},
	})
	for _, want := range []string{"kiln-master  ", "voter, leader", "learner", "https://10.120.0.11:2380"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
