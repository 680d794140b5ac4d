package up

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"kiln/components"
	"kiln/components/etcdmember"
	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/init/supervisor"
)

// fakeSup records what the etcd paths ask of the supervisor.
type fakeSup struct {
	mu  sync.Mutex
	did []string
}

func (f *fakeSup) Restart(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.did = append(f.did, "restart "+name)
	return nil
}

func (f *fakeSup) WaitReady(_ context.Context, names ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.did = append(f.did, "ready "+strings.Join(names, ","))
	return nil
}

var _ restarter = (*supervisor.Supervisor)(nil)

// A restore is refused for another cluster's snapshot and for a damaged
// one, before anything changes; a sound one is kept for etcd's next
// start, and etcd, then the API server, restart.
func TestEtcdRestoreChecks(t *testing.T) {
	dir := t.TempDir()
	cl, err := cluster.Generate(filepath.Join(dir, "cluster"), cluster.Options{Name: "unit", Endpoint: "127.0.0.1:6443"})
	if err != nil {
		t.Fatal(err)
	}
	env := &components.Env{Config: node.Default(), Cluster: cl, NodeName: "m1", DataDir: filepath.Join(dir, "data")}
	sup := &fakeSup{}
	h := withEtcd(env, sup, http.NotFoundHandler())
	files := etcdmember.Files{DataDir: components.EtcdDataDir(env)}
	post := func(body []byte, caHash, sum string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, nodeapi.PathEtcdRestore, bytes.NewReader(body))
		if caHash != "" {
			r.Header.Set(nodeapi.HeaderCAHash, caHash)
		}
		if sum != "" {
			r.Header.Set(nodeapi.HeaderSnapshotSHA256, sum)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	good := boltSnapshot(t)
	whole := sha256.Sum256(good)
	damaged := bytes.Clone(good)
	damaged[100] ^= 1
	for _, tc := range []struct {
		name        string
		body        []byte
		caHash, sum string
		status      int
		want        string
	}{
		{"no CA hash", good, "", "", http.StatusBadRequest, "no cluster CA hash"},
		{"another cluster", good, "sha256:" + strings.Repeat("0", 64), "", http.StatusConflict, "the snapshot is of another cluster"},
		{"damaged in transfer", good, cl.CAHash, strings.Repeat("0", 64), http.StatusBadRequest, "the transfer damaged it"},
		{"damaged", damaged, cl.CAHash, "", http.StatusBadRequest, "the snapshot received is damaged"},
	} {
		w := post(tc.body, tc.caHash, tc.sum)
		if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.want) {
			t.Errorf("%s: %d %q, want %d and %q", tc.name, w.Code, w.Body.String(), tc.status, tc.want)
		}
		for _, p := range []string{files.PendingSnapshot(), files.Upload()} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s: %s is there", tc.name, p)
			}
		}
	}
	if len(sup.did) != 0 {
		t.Fatalf("refused restores restarted: %v", sup.did)
	}

	w := post(good, cl.CAHash, hex.EncodeToString(whole[:]))
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "etcd on m1 restored from the snapshot") {
		t.Errorf("restore: %d %q", w.Code, w.Body.String())
	}
	if got, _ := os.ReadFile(files.PendingSnapshot()); !bytes.Equal(got, good) {
		t.Error("the snapshot is not pending for etcd's next start")
	}
	if want := "restart etcd|ready etcd|restart kube-apiserver"; strings.Join(sup.did, "|") != want {
		t.Errorf("supervisor asked %q, want %q", sup.did, want)
	}
}

// boltSnapshot is a snapshot of an empty bolt database, as etcd streams
// one: two meta pages, a freelist and a root leaf, then its sha256.
func boltSnapshot(t *testing.T) []byte {
	t.Helper()
	const page = 4096
	db := make([]byte, 4*page)
	le := func(b []byte, v uint64, n int) {
		for i := range n {
			b[i] = byte(v >> (8 * i))
		}
	}
	for i := range 2 {
		p := db[i*page:]
		le(p[0:], uint64(i), 8)
		le(p[8:], 0x04, 2) // meta
		m := p[16:]
		le(m[0:], 0xED0CDAED, 4)
		le(m[4:], 2, 4)
		le(m[8:], page, 4)
		le(m[16:], 3, 8) // root
		le(m[32:], 2, 8) // freelist
		le(m[40:], 4, 8) // pgid
		le(m[48:], uint64(i), 8)
		le(m[56:], fnv64a(m[:56]), 8)
	}
	le(db[2*page+8:], 0x10, 2) // freelist
	le(db[3*page+8:], 0x02, 2) // leaf
	sum := sha256.Sum256(db)
	return append(db, sum[:]...)
}

func fnv64a(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}
