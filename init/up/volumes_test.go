package up

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/pki"
)

const testVolume = "pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6"

// The node API over real TLS: the admins may use all of it; the
// provisioner's group may make and remove volumes and do nothing else;
// other clients are refused at the handshake.
func TestNodeAPIVolumesAuthorization(t *testing.T) {
	ca, err := pki.NewCA("kiln-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.NewCA("other-ca", time.Hour)
	dir := t.TempDir()
	caPath := filepath.Join(dir, "ca.crt")
	os.WriteFile(caPath, ca.CertPEM, 0o644)
	volumes := filepath.Join(dir, "volumes")
	status := http.NewServeMux()
	status.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "status") })
	status.HandleFunc("POST /etcd/reset", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "reset") })
	addr := freeAddr(t)
	stop, err := serveRemoteStatus(addr, caPath, "", "", withVolumes(volumeHost{node: "w1", dir: volumes, stateDisk: true}, status), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	client := func(c *pki.CA, groups ...string) *http.Client {
		certPEM, keyPEM, err := c.Issue(pki.CertRequest{CommonName: "someone", Organization: groups, Client: true, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		kp, _ := tls.X509KeyPair(certPEM, keyPEM)
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{kp}}}}
	}
	do := func(cl *http.Client, method, path string) (int, string, error) {
		req, _ := http.NewRequest(method, "https://"+addr+path, nil)
		resp, err := cl.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	vol := filepath.Join(volumes, testVolume)
	mkVolume := func() {
		if err := os.MkdirAll(filepath.Join(vol, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(vol, "sub", "data"), []byte("x"), 0o600)
	}

	admin, storage := client(ca, "system:masters"), client(ca, nodeapi.VolumesGroup)
	for _, tc := range []struct {
		name   string
		cl     *http.Client
		method string
		path   string
		want   int
		// there: the volume is there before the request.
		there bool
	}{
		{"admin reads the status", admin, "GET", "/status", 200, true},
		{"admin removes a volume", admin, "DELETE", nodeapi.PathVolumes + testVolume, 200, true},
		{"admin makes a volume", admin, "PUT", nodeapi.PathVolumes + testVolume, 201, false},
		{"provisioner removes a volume", storage, "DELETE", nodeapi.PathVolumes + testVolume, 200, true},
		{"provisioner makes a volume", storage, "PUT", nodeapi.PathVolumes + testVolume, 201, false},
		{"provisioner makes it again", storage, "PUT", nodeapi.PathVolumes + testVolume, 200, true},
		{"provisioner reads the status", storage, "GET", "/status", 403, true},
		{"provisioner resets etcd", storage, "POST", "/etcd/reset", 403, true},
		{"provisioner upgrades the node", storage, "POST", nodeapi.PathUpgrade, 403, true},
		{"provisioner reads a volume", storage, "GET", nodeapi.PathVolumes + testVolume, 403, true},
		{"provisioner posts to a volume", storage, "POST", nodeapi.PathVolumes + testVolume, 403, false},
		{"provisioner patches a volume", storage, "PATCH", nodeapi.PathVolumes + testVolume, 403, true},
		{"provisioner puts the status", storage, "PUT", "/status", 403, false},
		{"provisioner puts the volumes' directory", storage, "PUT", nodeapi.PathVolumes, 403, false},
		{"provisioner puts below a volume", storage, "PUT", nodeapi.PathVolumes + testVolume + "/sub", 403, false},
		{"provisioner climbs out", storage, "DELETE", nodeapi.PathVolumes + "..%2Fpki", 403, true},
		{"provisioner climbs out to make", storage, "PUT", nodeapi.PathVolumes + "..%2Fpki", 403, false},
		{"provisioner, not a volume's name", storage, "DELETE", nodeapi.PathVolumes + "pvc-x", 400, true},
		{"provisioner makes not a volume", storage, "PUT", nodeapi.PathVolumes + "pvc-x", 400, false},
	} {
		os.RemoveAll(volumes)
		if tc.there {
			mkVolume()
		}
		code, body, err := do(tc.cl, tc.method, tc.path)
		if err != nil || code != tc.want {
			t.Errorf("%s: %d %q %v, want %d", tc.name, code, body, err, tc.want)
		}
		ok := tc.want/100 == 2
		wantThere := tc.there
		switch {
		case tc.method == "DELETE" && ok:
			wantThere = false
		case tc.method == "PUT" && ok:
			wantThere = true
		}
		fi, statErr := os.Lstat(vol)
		if there := statErr == nil; there != wantThere {
			t.Errorf("%s: volume there %t, want %t", tc.name, there, wantThere)
		}
		if tc.method == "PUT" && ok && !tc.there && (statErr != nil || fi.Mode().Perm() != 0o777) {
			t.Errorf("%s: made %v %v, want a directory of mode 0777", tc.name, fi, statErr)
		}
		for _, p := range []string{filepath.Join(dir, "pki"), filepath.Join(volumes, "pvc-x")} {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("%s: %s was made", tc.name, p)
			}
		}
	}
	if _, body, _ := do(storage, "GET", "/status"); !strings.Contains(body, "may only PUT and DELETE /volumes/NAME") {
		t.Errorf("refusal does not say what the group may do: %q", body)
	}
	for name, cl := range map[string]*http.Client{
		"a node":                        client(ca, "system:nodes"),
		"another cluster's admin":       client(other, "system:masters"),
		"another cluster's provisioner": client(other, nodeapi.VolumesGroup),
	} {
		for _, method := range []string{"PUT", "DELETE"} {
			if code, _, err := do(cl, method, nodeapi.PathVolumes+testVolume); err == nil {
				t.Errorf("%s: %s served (%d)", name, method, code)
			}
		}
	}
}

// Making a volume makes its directory of mode 0777 whatever the umask,
// and its parent if need be; a directory that is there is made already
// and left as it is; anything else there is refused, as is a name that
// is not a volume's, before anything is touched; a node without a state
// disk refuses with 409 and says why.
func TestMakeVolume(t *testing.T) {
	old := syscall.Umask(0o077) // stricter than any node's
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "volumes")
	h := withVolumes(volumeHost{node: "w1", dir: dir, stateDisk: true}, http.NotFoundHandler())
	put := func(h http.Handler, name string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPut, nodeapi.PathVolumes+name, nil))
		return w
	}
	vol := filepath.Join(dir, testVolume)
	if w := put(h, testVolume); w.Code != http.StatusCreated || !strings.Contains(w.Body.String(), "made "+vol) {
		t.Fatalf("make: %d %q", w.Code, w.Body)
	}
	fi, err := os.Lstat(vol)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o777 {
		t.Fatalf("%s: %v %v, want a directory of mode 0777", vol, fi, err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 { // 0755 under the umask
		t.Errorf("the volumes' directory: mode %v", fi.Mode())
	}

	// Again: there already, with what a pod may have done to it.
	os.WriteFile(filepath.Join(vol, "data"), []byte("rows"), 0o600)
	os.Chmod(vol, 0o700)
	if w := put(h, testVolume); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "made already") {
		t.Errorf("make again: %d %q", w.Code, w.Body)
	}
	if fi, _ := os.Lstat(vol); fi.Mode().Perm() != 0o700 {
		t.Errorf("a volume that was there: mode %v, want it left 0700", fi.Mode())
	}
	if b, err := os.ReadFile(filepath.Join(vol, "data")); string(b) != "rows" {
		t.Errorf("a volume that was there lost its data: %q %v", b, err)
	}

	// Something else in its place.
	os.RemoveAll(vol)
	target := t.TempDir()
	os.Symlink(target, vol)
	if w := put(h, testVolume); w.Code != http.StatusInternalServerError || !strings.Contains(w.Body.String(), "is not a directory") {
		t.Errorf("a symbolic link to a directory: %d %q", w.Code, w.Body)
	}
	if fi, err := os.Lstat(vol); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Errorf("the symbolic link was changed: %v %v", fi, err)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() == 0o777 {
		t.Errorf("the link's target was made writable by all")
	}
	os.Remove(vol)
	os.WriteFile(vol, []byte("x"), 0o600)
	if w := put(h, testVolume); w.Code != http.StatusInternalServerError || !strings.Contains(w.Body.String(), "is not a directory") {
		t.Errorf("a file: %d %q", w.Code, w.Body)
	}
	os.Remove(vol)

	for _, name := range []string{"other", "pvc-", "..", "pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6..", "%2E%2E", "PVC-0F8E6C1A-3B2D-4C5E-8F90-A1B2C3D4E5F6"} {
		if w := put(h, name); w.Code/100 == 2 {
			t.Errorf("PUT %s: %d %q", name, w.Code, w.Body)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused names made %v", ents)
	}

	// A diskless node: 409, and nothing made.
	ramDir := filepath.Join(t.TempDir(), "volumes")
	diskless := withVolumes(volumeHost{node: "w2", dir: ramDir}, http.NotFoundHandler())
	w := put(diskless, testVolume)
	if want := "node w2 has no state disk: its volumes would live in RAM and vanish at power-off"; w.Code != http.StatusConflict || !strings.HasPrefix(w.Body.String(), want) {
		t.Errorf("diskless: %d %q, want 409 %q", w.Code, w.Body, want)
	}
	if _, err := os.Lstat(ramDir); !os.IsNotExist(err) {
		t.Errorf("a diskless node made %s: %v", ramDir, err)
	}
	// Removing is still allowed (whatever is there).
	w = httptest.NewRecorder()
	diskless.ServeHTTP(w, httptest.NewRequest(http.MethodDelete, nodeapi.PathVolumes+testVolume, nil))
	if w.Code != http.StatusOK {
		t.Errorf("diskless: remove: %d %q", w.Code, w.Body)
	}
}

// Removing a volume removes the directory and all it holds; a volume
// that is not there is removed already; a name that is not a volume's is
// refused before anything is touched.
func TestRemoveVolume(t *testing.T) {
	dir := t.TempDir()
	h := withVolumes(volumeHost{node: "w1", dir: dir, stateDisk: true}, http.NotFoundHandler())
	del := func(name string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodDelete, nodeapi.PathVolumes+name, nil))
		return w
	}
	vol := filepath.Join(dir, testVolume)
	os.MkdirAll(filepath.Join(vol, "a", "b"), 0o755)
	os.WriteFile(filepath.Join(vol, "a", "b", "f"), []byte("data"), 0o400)
	if os.Geteuid() == 0 { // as the node is
		os.Chmod(filepath.Join(vol, "a", "b"), 0o500) // as a pod may leave it
	}
	outside := filepath.Join(t.TempDir(), "keep")
	os.WriteFile(outside, []byte("keep"), 0o644)
	os.Symlink(outside, filepath.Join(vol, "link"))
	if w := del(testVolume); w.Code != 200 || !strings.Contains(w.Body.String(), "removed "+vol) {
		t.Fatalf("remove: %d %q", w.Code, w.Body)
	}
	if _, err := os.Lstat(vol); !os.IsNotExist(err) {
		t.Errorf("%s is still there: %v", vol, err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("a symbolic link's target outside the volume was removed: %v", err)
	}
	if w := del(testVolume); w.Code != 200 || !strings.Contains(w.Body.String(), "not there") {
		t.Errorf("remove again: %d %q", w.Code, w.Body)
	}
	os.WriteFile(filepath.Join(dir, "other"), nil, 0o644)
	for _, name := range []string{"other", "pvc-", "..", "pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6..", "%2E%2E"} {
		if w := del(name); w.Code == http.StatusOK {
			t.Errorf("DELETE %s: %d %q", name, w.Code, w.Body)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "other")); err != nil {
		t.Errorf("a file that is not a volume was removed: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the volumes' directory was removed: %v", err)
	}
}

// The node API serves the kubelet's serving certificate once it exists,
// so that a client can check it against the cluster CA; until then a
// self-signed one.
func TestNodeAPIServesKubeletCertificate(t *testing.T) {
	ca, err := pki.NewCA("kiln-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caPath := filepath.Join(dir, "ca.crt")
	os.WriteFile(caPath, ca.CertPEM, 0o644)
	servingPath := filepath.Join(dir, "kubelet-server-current.pem")
	addr := freeAddr(t)
	stop, err := serveRemoteStatus(addr, caPath, servingPath, servingPath, http.NotFoundHandler(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	certPEM, keyPEM, _ := ca.Issue(pki.CertRequest{CommonName: "kiln:local-storage", Organization: []string{nodeapi.VolumesGroup}, Client: true, Validity: time.Hour})
	kp, _ := tls.X509KeyPair(certPEM, keyPEM)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	handshake := func() error {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{kp}})
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Handshake()
	}
	if err := handshake(); err == nil {
		t.Fatal("the self-signed certificate was accepted")
	}
	host, _, _ := net.SplitHostPort(addr)
	sc, sk, err := ca.Issue(pki.CertRequest{CommonName: "system:node:w1", IPs: []net.IP{net.ParseIP(host)}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(servingPath, append(sc, sk...), 0o600) // as the kubelet writes it: both in one file
	if err := handshake(); err != nil {
		t.Fatalf("the kubelet's certificate: %v", err)
	}
}
