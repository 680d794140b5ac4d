package up

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"kiln/configs/nodeapi"
	"kiln/internal/nodeclient"
	"kiln/pki"
)

// kmsgReader hands out one record a Read, then EAGAIN, as /dev/kmsg
// opened non-blocking does; an EPIPE on the way is an overwritten record.
type kmsgReader struct{ recs []string }

func (k *kmsgReader) Read(p []byte) (int, error) {
	if len(k.recs) == 0 {
		return 0, unix.EAGAIN
	}
	r := k.recs[0]
	k.recs = k.recs[1:]
	if r == "EPIPE" {
		return 0, unix.EPIPE
	}
	return copy(p, r), nil
}
func (k *kmsgReader) Close() error { return nil }

func TestReadKmsg(t *testing.T) {
	r := &kmsgReader{recs: []string{
		"6,0,0,-;Linux version 6.12\n",
		"EPIPE",
		"4,12,1234567,-,caller=T1;virtio_net: a warning\n SUBSYSTEM=net\n DEVICE=n2\n",
		"no header\n",
	}}
	got, err := readKmsg(r, 1<<20)
	want := "[    0.000000] Linux version 6.12\n[    1.234567] virtio_net: a warning\nno header\n"
	if err != nil || string(got) != want {
		t.Errorf("got %q %v, want %q", got, err, want)
	}
	// The cap ends the read.
	r = &kmsgReader{recs: []string{"6,0,0,-;a\n", "6,1,0,-;b\n", "6,2,0,-;c\n"}}
	if got, _ := readKmsg(r, 10); strings.Count(string(got), "\n") != 1 {
		t.Errorf("capped read: %q", got)
	}
}

// testPKI is a cluster CA, a node's serving certificate from it, and an
// admin's and a volume provisioner's client certificates.
type testPKI struct {
	ca                        *pki.CA
	caPath, certPath, keyPath string
	admin, volumes            tls.Certificate
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	ca, err := pki.NewCA("kiln-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := &testPKI{ca: ca, caPath: filepath.Join(dir, "ca.crt"), certPath: filepath.Join(dir, "serving.crt"), keyPath: filepath.Join(dir, "serving.key")}
	os.WriteFile(p.caPath, ca.CertPEM, 0o644)
	certPEM, keyPEM, err := ca.Issue(pki.CertRequest{CommonName: "system:node:" + name, DNSNames: []string{name}, IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p.certPath, certPEM, 0o644)
	os.WriteFile(p.keyPath, keyPEM, 0o600)
	p.admin = p.client(t, "system:masters")
	p.volumes = p.client(t, nodeapi.VolumesGroup)
	return p
}

func (p *testPKI) client(t *testing.T, groups ...string) tls.Certificate {
	certPEM, keyPEM, err := p.ca.Issue(pki.CertRequest{CommonName: "someone", Organization: groups, Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// serveNode serves op's node API the way a node does, on loopback.
func serveNode(t *testing.T, p *testPKI, op *operator) string {
	t.Helper()
	addr := freeAddr(t)
	inner := http.NewServeMux()
	inner.HandleFunc("GET /logs/{name}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "logs of "+r.PathValue("name")+" "+r.URL.RawQuery)
	})
	stop, err := serveRemoteStatus(addr, p.caPath, p.certPath, p.keyPath, withOperator(op, inner), func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// The operator's paths: reboot and shutdown ask PID 1 (the injected
// power function) after answering; reset wants the node's name, marks
// the disk, and refuses on a diskless node; only admins get anything;
// the kiln client checks the node's certificate.
func TestOperatorPaths(t *testing.T) {
	p := newTestPKI(t, "node-1")
	var mu sync.Mutex
	var asked []string
	power := func(reboot bool, why string) {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, why)
	}
	dataDir := t.TempDir()
	op := &operator{nodeName: "node-1", power: power, dataDir: dataDir,
		kmsg: func() (io.ReadCloser, error) { return &kmsgReader{recs: []string{"6,1,2000000,-;hello kernel\n"}}, nil }}
	addr := serveNode(t, p, op)
	admin, err := nodeclient.New(p.admin, p.ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	node := nodeclient.Target{Addr: addr, Name: "node-1"}
	post := func(c *nodeclient.Client, path, body string) (int, string) {
		resp, err := c.Do(ctx, node, http.MethodPost, path, strings.NewReader(body), nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if got, err := admin.Get(ctx, node, nodeapi.PathDmesg, 1<<20); err != nil || string(got) != "[    2.000000] hello kernel\n" {
		t.Errorf("dmesg: %q %v", got, err)
	}
	if got, err := admin.Get(ctx, node, "/logs/etcd?tail=3&follow=1", 1<<20); err != nil || string(got) != "logs of etcd tail=3&follow=1" {
		t.Errorf("logs: %q %v", got, err)
	}
	if code, _ := post(admin, nodeapi.PathReboot, ""); code != http.StatusAccepted {
		t.Errorf("reboot: %d", code)
	}
	if code, _ := post(admin, nodeapi.PathShutdown, ""); code != http.StatusAccepted {
		t.Errorf("shutdown: %d", code)
	}
	if code, msg := post(admin, nodeapi.PathReset, "node-2"); code != http.StatusBadRequest || !strings.Contains(msg, "send its name, node-1") {
		t.Errorf("reset with the wrong name: %d %q", code, msg)
	}
	if _, err := os.Stat(filepath.Join(dataDir, nodeapi.ResetMarker)); err == nil {
		t.Error("a refused reset left its marker")
	}
	if code, msg := post(admin, nodeapi.PathReset, "node-1\n"); code != http.StatusAccepted {
		t.Errorf("reset: %d %q", code, msg)
	}
	if _, err := os.Stat(filepath.Join(dataDir, nodeapi.ResetMarker)); err != nil {
		t.Errorf("reset: no marker: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(asked)
		mu.Unlock()
		if n == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	slices.Sort(asked)
	if strings.Join(asked, ",") != "kiln reboot,kiln reset,kiln shutdown" {
		t.Errorf("power asked %q", asked)
	}
	mu.Unlock()

	// The volumes group gets none of it.
	vol, _ := nodeclient.New(p.volumes, p.ca.CertPEM)
	for _, path := range []string{nodeapi.PathReboot, nodeapi.PathShutdown, nodeapi.PathReset, nodeapi.PathRelay + "node-2/127.0.0.1/status"} {
		if code, _ := post(vol, path, "node-1"); code != http.StatusForbidden {
			t.Errorf("volumes group: POST %s: %d", path, code)
		}
	}
	if _, err := vol.Get(ctx, node, nodeapi.PathDmesg, 1<<20); err == nil {
		t.Error("volumes group: dmesg served")
	}
	// Another cluster's admin, and no certificate, get no connection.
	other := newTestPKI(t, "node-1")
	foreign, _ := nodeclient.New(other.admin, p.ca.CertPEM)
	if _, err := foreign.Get(ctx, node, nodeapi.PathDmesg, 1<<20); err == nil {
		t.Error("another cluster's admin: served")
	}
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if resp, err := plain.Get("https://" + addr + nodeapi.PathDmesg); err == nil {
		resp.Body.Close()
		t.Error("no client certificate: served")
	}
	// The client refuses a node of another CA, or of another name.
	wrongCA, _ := nodeclient.New(p.admin, other.ca.CertPEM)
	if _, err := wrongCA.Get(ctx, node, nodeapi.PathDmesg, 1<<20); !errors.Is(err, nodeclient.ErrNotVerified) {
		t.Errorf("node of another CA: %v", err)
	}
	if _, err := admin.Get(ctx, nodeclient.Target{Addr: addr, Name: "node-2"}, nodeapi.PathDmesg, 1<<20); !errors.Is(err, nodeclient.ErrNotVerified) {
		t.Errorf("node of another name: %v", err)
	}
}

// Without PID 1 (kiln-node up on a host) the node refuses to power off;
// a diskless node refuses a reset.
func TestOperatorRefusals(t *testing.T) {
	p := newTestPKI(t, "node-1")
	admin, _ := nodeclient.New(p.admin, p.ca.CertPEM)
	ctx := context.Background()
	host := serveNode(t, p, &operator{nodeName: "node-1"})
	diskless := serveNode(t, p, &operator{nodeName: "node-1", diskless: true, power: func(bool, string) { t.Error("powered off") }})
	for _, c := range []struct {
		addr, path string
		code       int
	}{
		{host, nodeapi.PathReboot, http.StatusNotImplemented},
		{host, nodeapi.PathReset, http.StatusNotImplemented},
		{host, nodeapi.PathDmesg, http.StatusNotFound}, // GET only
		{diskless, nodeapi.PathReset, http.StatusConflict},
	} {
		resp, err := admin.Do(ctx, nodeclient.Target{Addr: c.addr, Name: "node-1"}, http.MethodPost, c.path, strings.NewReader("node-1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("POST %s: %d, want %d", c.path, resp.StatusCode, c.code)
		}
	}
}

// A master relays to another node with its own admin certificate,
// checking the node's name; a relay does not relay again.
func TestRelay(t *testing.T) {
	p := newTestPKI(t, "worker-1")
	target := serveNode(t, p, &operator{nodeName: "worker-1"})
	adminCert := filepath.Join(t.TempDir(), "admin.crt")
	certPEM, keyPEM, _ := p.ca.Issue(pki.CertRequest{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Client: true, Validity: time.Hour})
	os.WriteFile(adminCert, certPEM, 0o644)
	os.WriteFile(adminCert+".key", keyPEM, 0o600)
	master := serveNode(t, p, &operator{nodeName: "master-1", relay: func() (*nodeclient.Client, error) {
		return nodeclient.FromFiles(adminCert, adminCert+".key", p.caPath)
	}})
	admin, _ := nodeclient.New(p.admin, p.ca.CertPEM)
	ctx := context.Background()
	_, port, _ := net.SplitHostPort(target)
	via := nodeclient.Target{Addr: master, Name: "worker-1"}
	// The relay dials port 10260; a test cannot, so it reaches the
	// target's port through the path's address only when it is 10260.
	if port != "10260" {
		resp, err := admin.Do(ctx, nodeclient.Target{Addr: "127.0.0.1:" + port, Name: "worker-1", Via: &via}, http.MethodGet, "/logs/kubelet?tail=1", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("relay to a closed port: %d", resp.StatusCode)
		}
	}
	for path, code := range map[string]int{
		nodeapi.PathRelay + "worker-1/not-an-ip/status":                     http.StatusBadRequest,
		nodeapi.PathRelay + "Bad_Name/127.0.0.1/status":                     http.StatusBadRequest,
		nodeapi.PathRelay + "worker-1/127.0.0.1/relay/worker-1/127.0.0.1/x": http.StatusBadRequest,
	} {
		resp, err := admin.Do(ctx, nodeclient.Target{Addr: master, Name: "worker-1"}, http.MethodGet, path, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, code)
		}
	}
	// A worker relays nothing.
	resp, err := admin.Do(ctx, nodeclient.Target{Addr: target, Name: "worker-1"}, http.MethodGet, nodeapi.PathRelay+"x/127.0.0.1/status", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("a worker's relay: %d", resp.StatusCode)
	}
}
