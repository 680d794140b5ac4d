package up

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"kiln/configs/nodeapi"
	"kiln/init/slots"
)

// fakeUpgrader records what Install read.
type fakeUpgrader struct {
	installs       int
	kernel, initrd []byte
	err            error
}

func (f *fakeUpgrader) Image() *nodeapi.ImageStatus { return &nodeapi.ImageStatus{Release: "v1"} }
func (f *fakeUpgrader) Ready()                      {}
func (f *fakeUpgrader) Install(u nodeapi.Upgrade, kernel, initrd io.Reader) (nodeapi.UpgradeAccepted, error) {
	f.installs++
	if f.err != nil {
		return nodeapi.UpgradeAccepted{}, f.err
	}
	var err error
	if f.kernel, err = io.ReadAll(kernel); err != nil {
		return nodeapi.UpgradeAccepted{}, err
	}
	if f.initrd, err = io.ReadAll(initrd); err != nil {
		return nodeapi.UpgradeAccepted{}, err
	}
	return nodeapi.UpgradeAccepted{Slot: "b", Message: "ok"}, nil
}

const testCA = "sha256:" + "ab" + "0000000000000000000000000000000000000000000000000000000000"

func hexSum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// upgradeStream is what kiln upgrade sends.
func upgradeStream(t *testing.T, u nodeapi.Upgrade, kernel, initrd []byte) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	desc, _ := json.Marshal(u)
	for _, e := range []struct {
		name string
		data []byte
	}{{nodeapi.UpgradeManifestName, desc}, {nodeapi.UpgradeKernelName, kernel}, {nodeapi.UpgradeInitrdName, initrd}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.data)
	}
	tw.Close()
	return &buf
}

func goodUpgrade(kernel, initrd []byte) nodeapi.Upgrade {
	return nodeapi.Upgrade{ImageID: "id2", Role: "worker", Release: "v2", ClusterCAHash: testCA,
		Cmdline:    []string{"console=ttyS0", "panic=-1"},
		KernelSize: int64(len(kernel)), KernelSHA256: hexSum(kernel), InitrdSize: int64(len(initrd)), InitrdSHA256: hexSum(initrd)}
}

func postUpgrade(h http.Handler, body io.Reader) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("POST", nodeapi.PathUpgrade, body))
	return w
}

func TestUpgradeStreamReachesPID1(t *testing.T) {
	kernel, initrd := []byte("the kernel"), bytes.Repeat([]byte("initrd"), 1000)
	f := &fakeUpgrader{}
	h := withUpgrade(upgradeTarget{role: "worker", caHash: testCA}, f, http.NotFoundHandler())
	w := postUpgrade(h, upgradeStream(t, goodUpgrade(kernel, initrd), kernel, initrd))
	if w.Code != http.StatusAccepted {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var acc nodeapi.UpgradeAccepted
	if err := json.Unmarshal(w.Body.Bytes(), &acc); err != nil || acc.Slot != "b" {
		t.Fatalf("%+v %v", acc, err)
	}
	if !bytes.Equal(f.kernel, kernel) || !bytes.Equal(f.initrd, initrd) {
		t.Errorf("PID 1 read %d and %d bytes", len(f.kernel), len(f.initrd))
	}
	// The other paths go on to the next handler.
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/status", nil))
	if w.Code != http.StatusNotFound {
		t.Errorf("GET /status: %d", w.Code)
	}
}

func TestUpgradeRefusedBeforeAnythingIsWritten(t *testing.T) {
	kernel, initrd := []byte("k"), []byte("i")
	for _, tc := range []struct {
		name string
		edit func(*nodeapi.Upgrade)
		code int
		want string
	}{
		{"another role", func(u *nodeapi.Upgrade) { u.Role = "master" }, http.StatusConflict, "is a master image and this node is a worker"},
		{"another cluster", func(u *nodeapi.Upgrade) { u.ClusterCAHash = "sha256:" + strings.Repeat("1", 64) }, http.StatusConflict, "another cluster"},
		{"no release", func(u *nodeapi.Upgrade) { u.Release = "" }, http.StatusConflict, "no ID or release"},
		{"huge", func(u *nodeapi.Upgrade) { u.InitrdSize = 2 << 30 }, http.StatusConflict, "out of range"},
		{"bad sum", func(u *nodeapi.Upgrade) { u.KernelSHA256 = "xyz" }, http.StatusConflict, "64 hex digits"},
		{"config injection", func(u *nodeapi.Upgrade) { u.Cmdline = append(u.Cmdline, "quiet\n  KERNEL /evil") }, http.StatusConflict, "white space"},
		{"slot set by the image", func(u *nodeapi.Upgrade) { u.Cmdline = append(u.Cmdline, "kiln.trial=a") }, http.StatusConflict, "sets kiln.trial itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeUpgrader{}
			h := withUpgrade(upgradeTarget{role: "worker", caHash: testCA}, f, http.NotFoundHandler())
			u := goodUpgrade(kernel, initrd)
			tc.edit(&u)
			w := postUpgrade(h, upgradeStream(t, u, kernel, initrd))
			if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.want) {
				t.Errorf("%d %s; want %d %q", w.Code, w.Body, tc.code, tc.want)
			}
			if f.installs != 0 {
				t.Error("PID 1 was asked to install it")
			}
		})
	}
	t.Run("not a tar stream", func(t *testing.T) {
		f := &fakeUpgrader{}
		w := postUpgrade(withUpgrade(upgradeTarget{role: "worker", caHash: testCA}, f, http.NotFoundHandler()), strings.NewReader("hello"))
		if w.Code != http.StatusBadRequest || f.installs != 0 {
			t.Errorf("%d %s", w.Code, w.Body)
		}
	})
}

func TestUpgradeConflictsAndHosts(t *testing.T) {
	kernel, initrd := []byte("k"), []byte("i")
	target := upgradeTarget{role: "worker", caHash: testCA}
	for _, err := range []error{slots.ErrNoSlots, slots.ErrOnTrial} {
		w := postUpgrade(withUpgrade(target, &fakeUpgrader{err: err}, http.NotFoundHandler()), upgradeStream(t, goodUpgrade(kernel, initrd), kernel, initrd))
		if w.Code != http.StatusConflict || !strings.Contains(w.Body.String(), err.Error()) {
			t.Errorf("%v: %d %s", err, w.Code, w.Body)
		}
	}
	// kiln-node up on a host: no PID 1, no image to upgrade.
	w := postUpgrade(withUpgrade(target, nil, http.NotFoundHandler()), upgradeStream(t, goodUpgrade(kernel, initrd), kernel, initrd))
	if w.Code != http.StatusNotImplemented {
		t.Errorf("without PID 1: %d %s", w.Code, w.Body)
	}
}
