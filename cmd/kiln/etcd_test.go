package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln/configs/cluster"
	"kiln/configs/nodeapi"
)

// fakeSnapshot writes a file with etcd's snapshot framing (whole 512-byte
// pages and their sha256) and, unless caHash is "", its record.
func fakeSnapshot(t *testing.T, path, caHash string) []byte {
	t.Helper()
	db := bytes.Repeat([]byte("kiln"), 256) // two pages
	sum := sha256.Sum256(db)
	data := append(db, sum[:]...)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if caHash != "" {
		whole := sha256.Sum256(data)
		rec, _ := json.Marshal(nodeapi.SnapshotInfo{Cluster: "c", CAHash: caHash, Node: "m1", Taken: time.Now(), Size: int64(len(data)), SHA256: hex.EncodeToString(whole[:])})
		if err := os.WriteFile(nodeapi.SnapshotInfoFile(path), rec, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return data
}

// fakeNode is a node API that records what it receives.
type fakeNode struct {
	*httptest.Server
	mu       sync.Mutex
	requests []string
	body     []byte
	header   http.Header
}

// newFakeNode serves with the serving certificate a node of the cluster
// in clusterDir has.
func newFakeNode(t *testing.T, clusterDir string, status int, answer string) *fakeNode {
	n := &fakeNode{}
	n.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		n.mu.Lock()
		n.requests = append(n.requests, r.Method+" "+r.URL.Path)
		n.body, n.header = body, r.Header.Clone()
		n.mu.Unlock()
		w.WriteHeader(status)
		io.WriteString(w, answer+"\n")
	}))
	n.TLS = &tls.Config{Certificates: []tls.Certificate{nodeCert(t, clusterDir, "m1", "127.0.0.1")}}
	n.StartTLS()
	t.Cleanup(n.Close)
	return n
}

func (n *fakeNode) addr() string { return strings.TrimPrefix(n.URL, "https://") }

func TestEtcdRestore(t *testing.T) {
	dir := t.TempDir()
	clusterDir := filepath.Join(dir, "c")
	if code, _, errOut := kiln(t, "gen", "cluster", "--name", "c", "--out", clusterDir); code != 0 {
		t.Fatalf("gen cluster: %s", errOut)
	}
	cl, err := cluster.Load(clusterDir)
	if err != nil {
		t.Fatal(err)
	}
	node := newFakeNode(t, clusterDir, http.StatusOK, "etcd on m1 restored")
	restore := func(file string) (int, string, string) {
		return kiln(t, "etcd", "restore", file, "--node", node.addr(), "--cluster", clusterDir)
	}

	// Refused before anything is sent.
	bare := filepath.Join(dir, "bare.db")
	fakeSnapshot(t, bare, "")
	foreign := filepath.Join(dir, "foreign.db")
	fakeSnapshot(t, foreign, "sha256:"+strings.Repeat("0", 64))
	changed := filepath.Join(dir, "changed.db")
	fakeSnapshot(t, changed, cl.CAHash)
	rec, _ := os.ReadFile(nodeapi.SnapshotInfoFile(changed))
	os.WriteFile(nodeapi.SnapshotInfoFile(changed), bytes.Replace(rec, []byte(`"sha256":"`), []byte(`"sha256":"00`), 1), 0o600)
	for file, want := range map[string][]string{
		bare:    {bare + " has no record " + bare + ".json", "kiln etcd snapshot save"},
		foreign: {foreign + ` is a snapshot of cluster "c" (CA "sha256:000`, "not of the cluster at --cluster (CA " + cl.CAHash + "): refusing to restore it"},
		changed: {"is not the snapshot " + changed + ".json records", "it changed since it was saved"},
	} {
		code, _, errOut := restore(file)
		for _, w := range want {
			if code != 1 || !strings.Contains(errOut, w) {
				t.Errorf("restore %s: exit %d, stderr %q; want 1 and %q", filepath.Base(file), code, errOut, w)
			}
		}
	}
	if len(node.requests) != 0 {
		t.Fatalf("refused snapshots were sent: %v", node.requests)
	}

	good := filepath.Join(dir, "good.db")
	data := fakeSnapshot(t, good, cl.CAHash)
	code, out, errOut := restore(good)
	if code != 0 || !strings.Contains(out, "etcd on m1 restored") {
		t.Fatalf("restore: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	whole := sha256.Sum256(data)
	if got := node.requests; len(got) != 1 || got[0] != "POST "+nodeapi.PathEtcdRestore {
		t.Errorf("requests %v, want one POST %s", got, nodeapi.PathEtcdRestore)
	}
	if !bytes.Equal(node.body, data) || node.header.Get(nodeapi.HeaderCAHash) != cl.CAHash || node.header.Get(nodeapi.HeaderSnapshotSHA256) != hex.EncodeToString(whole[:]) {
		t.Errorf("sent %d bytes with headers %v; want the file (%d bytes), its CA hash and sha256", len(node.body), node.header, len(data))
	}

	// The node's refusal is the command's error.
	busy := newFakeNode(t, clusterDir, http.StatusConflict, "etcd at https://10.0.0.11:2379 answers with a leader")
	code, _, errOut = kiln(t, "etcd", "reset", "--node", busy.addr(), "--cluster", clusterDir)
	if code != 1 || !strings.Contains(errOut, "answers with a leader") || busy.requests[0] != "POST "+nodeapi.PathEtcdReset {
		t.Errorf("reset refused by the node: exit %d, stderr %q, requests %v", code, errOut, busy.requests)
	}
}
