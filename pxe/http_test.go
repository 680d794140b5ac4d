package pxe

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/node"
)

// httpServer is a server without DHCP, its handler behind httptest.
func httpServer(t *testing.T, machines string) (*Server, *httptest.Server, *logBuffer, map[node.Role]*Image) {
	t.Helper()
	imgs := map[node.Role]*Image{node.RoleMaster: fakeImage(t, node.RoleMaster), node.RoleWorker: fakeImage(t, node.RoleWorker)}
	logs := &logBuffer{}
	cfg := Config{
		ServerIP: netip.MustParseAddr("127.0.0.1"),
		DHCP:     DHCPOff,
		Images:   []*Image{imgs[node.RoleMaster], imgs[node.RoleWorker]},
		Router:   netip.MustParseAddr("10.0.0.1"),
		IPXEDir:  fakeIPXEDir(t),
		Log:      logs.logger(),
		// The tests' master image holds nothing secret.
		AllowMasterImage: true,
		SecretsKey:       fixedSecretsKey(),
	}
	if machines != "" {
		cfg.Machines = mustMachines(t, machines)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts, logs, imgs
}

func get(t *testing.T, url string, header ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

const testMachines = `machines:
  52:54:00:12:34:56: {role: master, hostname: master-1, address: 10.0.0.10/24}
  52:54:00:00:00:02: {role: worker, hostname: worker-1}
default: refuse
`

func TestScript(t *testing.T) {
	_, ts, logs, _ := httpServer(t, testMachines)
	base := ts.URL
	for _, path := range []string{"/boot.ipxe?mac=52:54:00:12:34:56", "/boot.ipxe?mac=52-54-00-12-34-56", "/ipxe/52:54:00:12:34:56", "/ipxe/52-54-00-12-34-56", "/ipxe/525400123456"} {
		code, body, hdr := get(t, base+path)
		if code != 200 {
			t.Fatalf("%s: %d %s", path, code, body)
		}
		for _, want := range []string{
			"#!ipxe\n",
			"echo kiln: booting master-1 (master image id-master) from " + base + "\n",
			"kernel " + base + "/images/master/vmlinuz initrd=initramfs.img console=tty0 console=ttyS0,115200 panic=-1 kiln.boot=pxe kiln.config=" + base + "/config/52-54-00-12-34-56.yaml || goto failed\n",
			"initrd " + base + "/images/master/initramfs.img || goto failed\n",
			"boot || goto failed\n",
			"chain " + base + "/ipxe/52-54-00-12-34-56\n",
		} {
			if !strings.Contains(body, want) {
				t.Errorf("%s: script lacks %q:\n%s", path, want, body)
			}
		}
		if strings.Contains(body, "kiln.boot=kernel") {
			t.Errorf("the image's own kiln.boot= is kept:\n%s", body)
		}
		if hdr.Get("Cache-Control") != "no-store" {
			t.Errorf("Cache-Control %q", hdr.Get("Cache-Control"))
		}
	}
	_, body, _ := get(t, base+"/ipxe/52:54:00:00:00:02")
	if !strings.Contains(body, base+"/images/worker/vmlinuz ") || !strings.Contains(body, "booting worker-1 (worker image id-worker)") {
		t.Errorf("worker script:\n%s", body)
	}
	// Without a MAC: a script that asks again with it.
	code, body, _ := get(t, base+"/boot.ipxe")
	if code != 200 || !strings.Contains(body, "chain "+base+"/boot.ipxe?mac=${netX/mac}\n") {
		t.Errorf("generic script %d:\n%s", code, body)
	}
	// The URLs follow the Host the client used (port forwards)...
	_, body, _ = get(t, base+"/ipxe/52:54:00:00:00:02", "Host", "pxe.example:9999")
	if !strings.Contains(body, "kernel http://pxe.example:9999/images/worker/vmlinuz") {
		t.Errorf("Host not used:\n%s", body)
	}
	line := logs.waitLog(t, "msg=http", "mac=52:54:00:12:34:56", "path=/ipxe/525400123456", "status=200")
	if !strings.Contains(line, "bytes=") || !strings.Contains(line, "duration=") || !strings.Contains(line, "client=127.0.0.1") {
		t.Errorf("log line %s", line)
	}
}

func TestScriptRefused(t *testing.T) {
	_, ts, logs, _ := httpServer(t, testMachines)
	code, body, _ := get(t, ts.URL+"/ipxe/02:00:00:00:00:99")
	if code != 404 || !strings.Contains(body, "unknown machine 02:00:00:00:00:99") {
		t.Errorf("unknown MAC: %d %q", code, body)
	}
	logs.waitLog(t, "level=WARN", "mac=02:00:00:00:00:99", "status=404", "refused")
	for _, p := range []string{"/ipxe/nonsense", "/boot.ipxe?mac=52:54:00", "/config/xyz.yaml"} {
		if code, _, _ := get(t, ts.URL+p); code != 400 {
			t.Errorf("%s: %d, want 400", p, code)
		}
	}
	if code, _, _ := get(t, ts.URL+"/config/02-00-00-00-00-99.yaml"); code != 403 {
		t.Errorf("config of an unknown machine: %d", code)
	}
	logs.waitLog(t, "level=WARN", "client=127.0.0.1", "path=/config/02-00-00-00-00-99.yaml", "status=403", "refused: 02:00:00:00:00:99 is not in machines.yaml")
}

func TestDefaultMachine(t *testing.T) {
	_, ts, _, _ := httpServer(t, "machines:\n  52:54:00:12:34:56: {role: master}\ndefault: {role: worker}\n")
	_, body, _ := get(t, ts.URL+"/ipxe/02:00:00:00:00:99")
	if !strings.Contains(body, "booting worker-020000000099 (worker image") {
		t.Errorf("script:\n%s", body)
	}
	code, body, _ := get(t, ts.URL+"/config/02-00-00-00-00-99.yaml")
	cfg, err := node.Parse([]byte(body))
	if code != 200 || err != nil || cfg.Hostname != "worker-020000000099" || cfg.Role != node.RoleWorker {
		t.Errorf("config %d %v:\n%s", code, err, body)
	}
	// A default worker gets the worker's files, never the master's.
	if code, _, _ := get(t, ts.URL+"/images/worker/vmlinuz"); code != 200 {
		t.Errorf("worker kernel to a default worker: %d", code)
	}
	if code, _, _ := get(t, ts.URL+"/images/master/initramfs.img"); code != 403 {
		t.Errorf("master initramfs to a default worker: %d", code)
	}
	// No machines file: every machine is a worker.
	s, err := New(Config{ServerIP: netip.MustParseAddr("127.0.0.1"), DHCP: DHCPOff, Images: []*Image{fakeImage(t, node.RoleWorker)}, SecretsKey: fixedSecretsKey()})
	if err != nil {
		t.Fatal(err)
	}
	ts = httptest.NewServer(s.Handler())
	defer ts.Close()
	if _, body, _ := get(t, ts.URL+"/ipxe/02:00:00:00:00:98"); !strings.Contains(body, "/images/worker/vmlinuz") {
		t.Errorf("script:\n%s", body)
	}
}

func TestImageFiles(t *testing.T) {
	s, ts, logs, imgs := httpServer(t, testMachines)
	macs := map[node.Role]string{node.RoleMaster: "52:54:00:12:34:56", node.RoleWorker: "52:54:00:00:00:02"}
	for role, img := range imgs {
		// DHCP saw 127.0.0.1 with a machine of the role.
		s.noteClient(netip.MustParseAddr("127.0.0.1"), mac(t, macs[role]))
		for name, path := range map[string]string{kernelFile: img.Kernel, initramfsFile: img.Initramfs} {
			want, _ := os.ReadFile(path)
			code, body, hdr := get(t, ts.URL+"/images/"+string(role)+"/"+name)
			if code != 200 || body != string(want) || hdr.Get("Content-Length") != fmt.Sprint(len(want)) {
				t.Errorf("%s/%s: %d, %d bytes", role, name, code, len(body))
			}
			// Ranges work (iPXE does not use them, curl -C does).
			code, body, _ = get(t, ts.URL+"/images/"+string(role)+"/"+name, "Range", "bytes=10-19")
			if code != 206 || body != string(want[10:20]) {
				t.Errorf("range: %d %q", code, body)
			}
		}
	}
	// Only the boot files: nothing else of the image directory.
	for _, p := range []string{
		"/images/master/admin.kubeconfig", "/images/master/image.json", "/images/master/cmdline",
		"/images/master/..%2fadmin.kubeconfig", "/images/master/../master/admin.kubeconfig",
		"/images/other/vmlinuz", "/images/master/pxe/vmlinuz", "/images/..%2f..%2fetc/passwd",
	} {
		code, body, _ := get(t, ts.URL+p)
		if code == 200 || strings.Contains(body, "secret") {
			t.Errorf("%s: %d %q", p, code, body)
		}
	}
	// A download by a machine whose address the server knows is logged
	// with its MAC address.
	s.noteClient(netip.MustParseAddr("127.0.0.1"), mac(t, "52:54:00:00:00:02"))
	get(t, ts.URL+"/images/worker/initramfs.img")
	logs.waitLog(t, "mac=52:54:00:00:00:02", "path=/images/worker/initramfs.img", "status=200", "bytes=300000")
}

func TestConfigEndpoint(t *testing.T) {
	_, ts, _, _ := httpServer(t, testMachines)
	code, body, hdr := get(t, ts.URL+"/config/52-54-00-12-34-56.yaml")
	if code != 200 || hdr.Get("Content-Type") != "application/yaml" {
		t.Fatalf("%d %s", code, body)
	}
	cfg, err := node.Parse([]byte(body))
	if err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	if cfg.Role != node.RoleMaster || cfg.Hostname != "master-1" || cfg.Network.Address != "10.0.0.10/24" ||
		cfg.Network.Gateway != "10.0.0.1" || cfg.Address != "10.0.0.10" {
		t.Errorf("config %+v\n%s", cfg, body)
	}
	if code, _, _ := get(t, ts.URL+"/config/52-54-00-12-34-56.json"); code != 404 {
		t.Errorf(".json: %d", code)
	}
	if code, _, _ := get(t, ts.URL+"/config/52:54:00:00:00:02.yaml"); code != 200 {
		t.Errorf("colon form: %d", code)
	}
	if code, _, _ := get(t, ts.URL+"/nothing"); code != 404 {
		t.Errorf("/nothing: %d", code)
	}
	resp, err := http.Post(ts.URL+"/config/52-54-00-12-34-56.yaml", "text/plain", bytes.NewReader(nil))
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST: %d", resp.StatusCode)
		}
	}
}

func TestNewErrors(t *testing.T) {
	w, m := fakeImage(t, node.RoleWorker), fakeImage(t, node.RoleMaster)
	ip := netip.MustParseAddr("127.0.0.1")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no image", Config{ServerIP: ip, DHCP: DHCPOff}, "no image to serve"},
		{"two of a role", Config{ServerIP: ip, DHCP: DHCPOff, Images: []*Image{w, w}}, "two worker images"},
		{"role without image", Config{ServerIP: ip, DHCP: DHCPOff, Images: []*Image{w},
			Machines: mustMachines(t, "machines:\n  52:54:00:12:34:56: {role: master}\n")}, "boots master machines, but no master image"},
		{"DHCP without interface", Config{ServerIP: ip, Images: []*Image{w}}, "no network interface given"},
		{"no address", Config{DHCP: DHCPOff, Images: []*Image{w}}, "no server address"},
		{"bad mode", Config{ServerIP: ip, DHCP: "maybe", Images: []*Image{w}}, `DHCP mode "maybe"`},
		{"range without full", Config{ServerIP: ip, DHCP: DHCPOff, Images: []*Image{w}, RangeStart: ip, RangeEnd: ip}, "it needs full"},
		{"missing interface", Config{Interface: "kiln-no-such0", Images: []*Image{w}}, "interface kiln-no-such0"},
		{"master image without the flag", Config{ServerIP: ip, DHCP: DHCPOff, Images: []*Image{w, m}, Machines: mustMachines(t, testMachines)},
			"is a master image: it holds every key of the cluster"},
		{"master image without the flag, flag named", Config{ServerIP: ip, DHCP: DHCPOff, Images: []*Image{m}, Machines: mustMachines(t, testMachines)},
			"with --allow-master-image"},
		{"only a master image, no machines file", Config{ServerIP: ip, DHCP: DHCPOff, Images: []*Image{m}, AllowMasterImage: true},
			"no machines file: every machine would boot the master image"},
		{"master by default", Config{ServerIP: ip, DHCP: DHCPOff, Images: []*Image{m}, AllowMasterImage: true, Machines: DefaultMachines(node.RoleMaster)},
			"the default is master: unknown machines never get the master image"},
		{"master image, no master listed", Config{ServerIP: ip, DHCP: DHCPOff, Images: []*Image{w, m}, AllowMasterImage: true,
			Machines: mustMachines(t, "machines:\n  52:54:00:00:00:02: {role: worker}\ndefault: {role: worker}\n")}, "lists no master, so the master image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLoadImage(t *testing.T) {
	img := fakeImage(t, node.RoleWorker)
	if img.Role != node.RoleWorker || img.ID != "id-worker" || strings.Join(img.Cmdline, " ") != "console=tty0 console=ttyS0,115200 panic=-1" ||
		!strings.HasSuffix(img.Kernel, "/pxe/vmlinuz") {
		t.Errorf("%+v", img)
	}
	// Without the pxe format, the kernel format's boot files are served.
	os.Remove(img.Kernel)
	os.Remove(img.Initramfs)
	k, err := LoadImage(img.Dir)
	if err != nil || k.Kernel != filepath.Join(img.Dir, "vmlinuz") {
		t.Fatalf("without pxe/: %+v, %v", k, err)
	}
	os.Remove(k.Kernel)
	if _, err := LoadImage(img.Dir); err == nil || !strings.Contains(err.Error(), "has neither the pxe nor the kernel format") {
		t.Errorf("no kernel: %v", err)
	}
	if _, err := LoadImage(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a kiln image directory") {
		t.Errorf("not an image: %v", err)
	}
}

// TestServeLoopback runs the whole server without DHCP on loopback: TFTP
// hands out the iPXE binaries and the boot files (to real clients), HTTP
// the rest.
func TestServeLoopback(t *testing.T) {
	logs := &logBuffer{}
	ipxeDir := fakeIPXEDir(t)
	img := fakeImage(t, node.RoleWorker)
	s, err := New(Config{ServerIP: netip.MustParseAddr("127.0.0.1"), DHCP: DHCPOff, Images: []*Image{img}, IPXEDir: ipxeDir, Log: logs.logger(),
		SecretsKey: fixedSecretsKey()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	// The boot files go to machines the server knows: this request ties
	// 127.0.0.1 to a MAC address (a default worker).
	code, body, _ := get(t, s.BaseURL()+"/ipxe/52:54:00:00:00:07")
	if code != 200 || !strings.Contains(body, s.BaseURL()+"/images/worker/vmlinuz") {
		t.Errorf("http: %d\n%s", code, body)
	}
	for name, path := range map[string]string{
		BIOSBootFile:                   ipxeDir + "/" + BIOSBootFile,
		UEFIBootFile:                   ipxeDir + "/" + UEFIBootFile,
		"images/worker/vmlinuz":        img.Kernel,
		"/images/worker/initramfs.img": img.Initramfs,
	} {
		want, _ := os.ReadFile(path)
		got, err := exec.Command(curl, "-sS", "--tftp-blksize", "1468", fmt.Sprintf("tftp://%s/%s", s.TFTPAddr(), strings.TrimPrefix(name, "/"))).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("tftp %s: %v, %d bytes, want %d", name, err, len(got), len(want))
		}
	}
	if out, err := exec.Command(curl, "-sS", fmt.Sprintf("tftp://%s/pxe/boot.ipxe", s.TFTPAddr())).CombinedOutput(); err == nil {
		t.Errorf("tftp serves a file outside the list: %s", out)
	}
	logs.waitLog(t, "msg=tftp", "file="+UEFIBootFile, "bytes=70000", "blksize=1468", "client=127.0.0.1")
	// The script request tied 127.0.0.1 to the MAC address: later
	// downloads are logged with it.
	exec.Command(curl, "-sS", "-o", "/dev/null", fmt.Sprintf("tftp://%s/%s", s.TFTPAddr(), BIOSBootFile)).Run()
	logs.waitLog(t, "msg=tftp", "mac=52:54:00:00:00:07", "file="+BIOSBootFile)
}
