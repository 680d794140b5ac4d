package pxe

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/node"
)

const ownSecret = "an-entry-secret-of-its-own-0123456789"

const secretMachines = `machines:
  52:54:00:12:34:56: {role: master, hostname: master-1, address: 10.0.0.10/24}
  52:54:00:00:00:02: {role: worker, hostname: worker-1}
  52:54:00:00:00:03: {role: worker, hostname: worker-2, nodeSecret: ` + ownSecret + `}
default: {role: worker}
`

// secretServer is a server without DHCP with the key of keyFile, its
// handler behind httptest.
func secretServer(t *testing.T, keyFile, machines string, logs *logBuffer) *httptest.Server {
	t.Helper()
	key, err := LoadSecretsKey(keyFile, false)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{ServerIP: netip.MustParseAddr("127.0.0.1"), DHCP: DHCPOff, IPXEDir: fakeIPXEDir(t), Log: logs.logger(),
		Images: []*Image{fakeImage(t, node.RoleWorker)}, SecretsKey: key}
	if machines != "" {
		cfg.Images = append(cfg.Images, fakeImage(t, node.RoleMaster))
		cfg.AllowMasterImage = true
		cfg.Machines = mustMachines(t, machines)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return ts
}

// servedSecret is the nodeSecret of the config the server serves for mac.
func servedSecret(t *testing.T, ts *httptest.Server, mac string) string {
	t.Helper()
	code, body, _ := get(t, ts.URL+"/config/"+mac+".yaml")
	if code != 200 {
		t.Fatalf("config of %s: %d %s", mac, code, body)
	}
	cfg, err := node.Parse([]byte(body))
	if err != nil {
		t.Fatalf("config of %s: %v", mac, err)
	}
	if cfg.NodeSecret == "" {
		t.Fatalf("config of %s has no nodeSecret", mac)
	}
	return cfg.NodeSecret
}

// TestNodeSecrets: each machine's config carries a nodeSecret that is the
// same from two servers with the same key file (a restart), differs
// between machines, is the entry's own when the machines file gives one,
// and never shows in the log.
func TestNodeSecrets(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), DefaultSecretsKeyFile)
	logs := &logBuffer{}
	one := secretServer(t, keyFile, secretMachines, logs)
	two := secretServer(t, keyFile, secretMachines, logs)
	key, _ := os.ReadFile(keyFile)

	secrets := map[string]bool{}
	for _, mac := range []string{"52-54-00-12-34-56", "52-54-00-00-00-02", "52-54-00-00-00-03", "02-00-00-00-00-99"} {
		a, b := servedSecret(t, one, mac), servedSecret(t, two, mac)
		if a != b {
			t.Errorf("%s: two servers with the same key serve two secrets", mac)
		}
		if secrets[a] {
			t.Errorf("%s: the secret of another machine", mac)
		}
		secrets[a] = true
		want := ownSecret
		if mac != "52-54-00-00-00-03" {
			h := hmac.New(sha256.New, key)
			h.Write([]byte(strings.ReplaceAll(mac, "-", ":")))
			want = hex.EncodeToString(h.Sum(nil))
		}
		if a != want {
			t.Errorf("%s: served %d characters, not the %s secret", mac, len(a), map[bool]string{true: "entry's", false: "derived"}[want == ownSecret])
		}
	}
	// Without a machines file, each machine still gets its own, by MAC.
	none := secretServer(t, keyFile, "", logs)
	if got := servedSecret(t, none, "02-00-00-00-00-99"); got != servedSecret(t, one, "02-00-00-00-00-99") {
		t.Error("without a machines file: another secret for the same MAC and key")
	}
	if servedSecret(t, none, "02-00-00-00-00-98") == servedSecret(t, none, "02-00-00-00-00-99") {
		t.Error("without a machines file: two machines share a secret")
	}
	secrets[servedSecret(t, none, "02-00-00-00-00-98")] = true

	// Another key: other derived secrets, the entry's own unchanged.
	other := secretServer(t, filepath.Join(t.TempDir(), "other.key"), secretMachines, logs)
	if servedSecret(t, other, "52-54-00-00-00-02") == servedSecret(t, one, "52-54-00-00-00-02") {
		t.Error("another key derives the same secret")
	}
	if servedSecret(t, other, "52-54-00-00-00-03") != ownSecret {
		t.Error("the entry's own secret depends on the key")
	}

	logs.waitLog(t, "path=/config/52-54-00-00-00-03.yaml", "status=200")
	for s := range secrets {
		if strings.Contains(logs.String(), s) {
			t.Errorf("a secret in the log:\n%s", logs.String())
		}
	}
	if strings.Contains(logs.String(), hex.EncodeToString(key)) {
		t.Error("the key in the log")
	}
}

// TestSecretsKeyFile: the key is made 0600 with 32 random bytes, kept
// across loads, and refused when other users may read it or it is short.
func TestSecretsKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", "kiln", DefaultSecretsKeyFile)
	if _, err := LoadSecretsKey(path, false); err == nil {
		t.Fatal("a key made in a directory that does not exist, without mkdir")
	}
	k, err := LoadSecretsKey(path, true)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != SecretsKeySize || !k.Created || k.Path != path {
		t.Fatalf("new key: %v, %v, created %v", fi.Mode(), err, k.Created)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %v", di.Mode())
	}
	again, err := LoadSecretsKey(path, true)
	if err != nil || again.Created {
		t.Fatalf("again: %v, created %v", err, again != nil && again.Created)
	}
	m := mac(t, "52:54:00:00:00:02")
	if k.NodeSecret(m) != again.NodeSecret(m) || len(k.NodeSecret(m)) != 64 {
		t.Error("the key changed between loads")
	}

	// Printed, it shows its file only.
	b, _ := os.ReadFile(path)
	var logs logBuffer
	logs.logger().Info("key", "key", k, "config", Config{SecretsKey: k})
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%+v %#v", k, k), fmt.Sprintf("%+v", Config{SecretsKey: k}), logs.String()} {
		if strings.Contains(s, string(b)) || strings.Contains(s, fmt.Sprint(b)) || strings.Contains(s, hex.EncodeToString(b)) {
			t.Errorf("key printed: %s", s)
		}
	}

	for _, mode := range []os.FileMode{0o640, 0o604, 0o620} {
		os.Chmod(path, mode)
		_, err := LoadSecretsKey(path, false)
		if want := fmt.Sprintf("secrets key %s is open to other users of this host (mode %04o)", path, mode); err == nil || !strings.Contains(err.Error(), want) ||
			!strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, make([]byte, 31), 0o600)
	if _, err := LoadSecretsKey(short, false); err == nil || !strings.Contains(err.Error(), "holds 31 bytes, want at least 32") {
		t.Errorf("short key: %v", err)
	}
	if _, err := LoadSecretsKey(dir, false); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
	if _, err := NewSecretsKey(make([]byte, 16)); err == nil {
		t.Error("a 16-byte key")
	}
}

func TestDefaultSecretsKeyPath(t *testing.T) {
	if p, _ := DefaultSecretsKeyPath("/etc/kiln/machines.yaml"); p != "/etc/kiln/"+DefaultSecretsKeyFile {
		t.Errorf("next to the machines file: %s", p)
	}
	t.Setenv("XDG_STATE_HOME", "/var/lib/x")
	if p, _ := DefaultSecretsKeyPath(""); p != "/var/lib/x/kiln/"+DefaultSecretsKeyFile {
		t.Errorf("XDG_STATE_HOME: %s", p)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/k")
	if p, _ := DefaultSecretsKeyPath(""); p != "/home/k/.local/state/kiln/"+DefaultSecretsKeyFile {
		t.Errorf("HOME: %s", p)
	}
}

// TestMachineSecrets: a machines file's nodeSecret is checked (16 to 256
// characters, each machine its own) and never shows in an error, a
// printed Machine or a log record.
func TestMachineSecrets(t *testing.T) {
	ms := mustMachines(t, secretMachines)
	m, _ := ms.Lookup(mac(t, "52:54:00:00:00:03"))
	if m.NodeSecret != ownSecret {
		t.Fatalf("entry secret not read")
	}
	var logs logBuffer
	logs.logger().Info("machine", "m", m, "secret", m.NodeSecret)
	for _, s := range []string{fmt.Sprint(m), fmt.Sprintf("%+v", m), fmt.Sprintf("%#v", m), logs.String()} {
		if strings.Contains(s, ownSecret) {
			t.Errorf("secret printed: %s", s)
		}
	}
	if !strings.Contains(string(m.ConfigYAML(netip.Addr{}, nil)), "nodeSecret: "+ownSecret) {
		t.Error("the entry's secret is not in its config")
	}

	short := "tooshort-secret"
	for _, tc := range []struct {
		name, text, want string
	}{
		{"short", "machines:\n  52:54:00:12:34:56:\n    role: worker\n    nodeSecret: " + short + "\n",
			"machines.yaml:4: machines[52:54:00:12:34:56].nodeSecret: 15 characters; want 16 to 256"},
		{"long", "machines:\n  52:54:00:12:34:56: {role: worker, nodeSecret: " + strings.Repeat(short, 20) + "}\n",
			"machines.yaml:2: machines[52:54:00:12:34:56].nodeSecret: 300 characters; want 16 to 256"},
		{"empty", "machines:\n  52:54:00:12:34:56: {role: worker, nodeSecret: ''}\n",
			"machines.yaml:2: machines[52:54:00:12:34:56].nodeSecret: 0 characters"},
		{"shared", "machines:\n  52:54:00:12:34:56: {role: worker, nodeSecret: " + ownSecret + "}\n  52:54:00:12:34:57: {role: worker, nodeSecret: " + ownSecret + "}\n",
			"machines.yaml:3: machines[52:54:00:12:34:57].nodeSecret: the same as the nodeSecret of 52:54:00:12:34:56: each machine needs its own"},
		{"given twice", "machines:\n  52:54:00:12:34:56: {role: worker, nodeSecret: " + ownSecret + ", nodeSecret: " + ownSecret + "x}\n",
			"machines[52:54:00:12:34:56].nodeSecret: given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMachines("machines.yaml", []byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), short) || strings.Contains(err.Error(), ownSecret) {
				t.Errorf("the secret in the error: %v", err)
			}
		})
	}
}

func TestNewWithoutSecretsKey(t *testing.T) {
	_, err := New(Config{ServerIP: netip.MustParseAddr("127.0.0.1"), DHCP: DHCPOff, Images: []*Image{fakeImage(t, node.RoleWorker)},
		Log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "no secrets key") {
		t.Errorf("got %v", err)
	}
}
