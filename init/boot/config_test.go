package boot

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/init/boot/cmdline"
	"kiln/init/boot/console"
)

// fakeRoot writes files under a temporary root and returns a ReadFile that
// reads absolute paths from it.
func fakeRoot(t *testing.T, files map[string]string) func(string) ([]byte, error) {
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return func(p string) ([]byte, error) { return os.ReadFile(filepath.Join(root, p)) }
}

func drive(src, data string) func() (string, []byte, error) {
	return func() (string, []byte, error) { return src, []byte(data), nil }
}

func TestConfigPrecedence(t *testing.T) {
	read := fakeRoot(t, map[string]string{
		image.ConfigFile:    "role: master\nhostname: embedded\naddress: 10.0.0.1\nextraArgs:\n  kubelet:\n    v: \"1\"\n",
		"/etc/kiln/x.yaml":  "hostname: from-path\nextraArgs:\n  kubelet:\n    max-pods: \"20\"\n",
		"/etc/kiln/bad.yml": "role: worker\nrloe: master\n",
	})
	for _, tc := range []struct {
		name      string
		cmdline   string
		drive     func() (string, []byte, error)
		role      node.Role
		host      string
		sources   string
		remote    string
		addrSet   bool
		wantError []string
	}{
		{name: "embedded only", role: node.RoleMaster, host: "embedded", sources: image.ConfigFile, addrSet: true},
		{name: "drive over embedded", drive: drive("config drive /dev/vdb/config.yaml", "role: worker\nhostname: drive\n"),
			role: node.RoleWorker, host: "drive", sources: image.ConfigFile + ", config drive /dev/vdb/config.yaml", addrSet: true},
		{name: "path over drive", cmdline: "kiln.config=/etc/kiln/x.yaml", drive: drive("drive", "hostname: drive\nrole: worker\n"),
			role: node.RoleWorker, host: "from-path", sources: image.ConfigFile + ", drive, kiln.config=/etc/kiln/x.yaml", addrSet: true},
		{name: "overrides last", cmdline: "kiln.hostname=cmd kiln.config=/etc/kiln/x.yaml kiln.role=worker",
			role: node.RoleWorker, host: "cmd", sources: image.ConfigFile + ", kiln.config=/etc/kiln/x.yaml, kiln.hostname=cmd, kiln.role=worker", addrSet: true},
		{name: "remote later", cmdline: "kiln.config=http://10.0.2.2:8080/node.yaml kiln.role=worker",
			role: node.RoleWorker, host: "embedded", sources: image.ConfigFile + ", kiln.role=worker", remote: "http://10.0.2.2:8080/node.yaml", addrSet: true},
		{name: "bad path", cmdline: "kiln.config=/etc/kiln/bad.yml",
			wantError: []string{"config kiln.config=/etc/kiln/bad.yml: line 2", `unknown field "rloe"`}},
		{name: "missing path", cmdline: "kiln.config=/etc/kiln/none.yaml",
			wantError: []string{"config kiln.config=/etc/kiln/none.yaml", "no such file"}},
		{name: "bad drive", drive: drive("config drive /dev/vdb/config.yaml", "role: boss\n"),
			wantError: []string{"config config drive /dev/vdb/config.yaml: role:", `"boss"`, "master"}},
		{name: "bad override", cmdline: "kiln.role=boss",
			wantError: []string{"config kiln.role=boss: role:", `"boss"`}},
		{name: "drive error", drive: func() (string, []byte, error) {
			return "", nil, errors.New("config config drive /dev/sr0: no config.yaml on it")
		},
			wantError: []string{"/dev/sr0", "no config.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stack, remote, err := localConfig(configInputs{Embedded: image.ConfigFile, ReadFile: read, Drive: tc.drive, Cmdline: cmdline.Parse(tc.cmdline)})
			var cfg node.Config
			if err == nil {
				cfg, err = stack.resolve()
			}
			if len(tc.wantError) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantError {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Role != tc.role || cfg.Hostname != tc.host {
				t.Errorf("role %s host %s, want %s %s", cfg.Role, cfg.Hostname, tc.role, tc.host)
			}
			if got := strings.Join(stack.sources(), ", "); got != tc.sources {
				t.Errorf("sources %q, want %q", got, tc.sources)
			}
			if remote != tc.remote {
				t.Errorf("remote %q, want %q", remote, tc.remote)
			}
			if stack.addressSet() != tc.addrSet {
				t.Errorf("addressSet %v", stack.addressSet())
			}
		})
	}

	// Flags of one component merge across sources.
	stack, _, err := localConfig(configInputs{Embedded: image.ConfigFile, ReadFile: read, Cmdline: cmdline.Parse("kiln.config=/etc/kiln/x.yaml")})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := stack.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.ExtraArgs["kubelet"]; got["v"] != "1" || got["max-pods"] != "20" {
		t.Errorf("kubelet flags %v", got)
	}
}

func TestConfigNoEmbedded(t *testing.T) {
	read := fakeRoot(t, nil)
	stack, _, err := localConfig(configInputs{Embedded: image.ConfigFile, ReadFile: read})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := stack.resolve()
	if err != nil || cfg.Role != node.RoleMaster || strings.Join(stack.sources(), ",") != "defaults" || stack.addressSet() {
		t.Errorf("defaults: %v %+v %v", err, cfg, stack.sources())
	}
}

// The remote config goes after the local sources and before the command
// line overrides, and is retried until the server answers.
func TestRemoteConfig(t *testing.T) {
	old := fetchRetryBase
	fetchRetryBase = 5 * time.Millisecond
	defer func() { fetchRetryBase = old }()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "role: worker\nhostname: remote\nstorage:\n  stateDisk: /dev/vdb\n")
	}))
	defer srv.Close()

	read := fakeRoot(t, map[string]string{image.ConfigFile: "role: master\nhostname: embedded\n"})
	stack, remote, err := localConfig(configInputs{Embedded: image.ConfigFile, ReadFile: read, Cmdline: cmdline.Parse("kiln.config=" + srv.URL + " kiln.hostname=cmd")})
	if err != nil || remote != srv.URL {
		t.Fatalf("%v %q", err, remote)
	}
	var out strings.Builder
	con := console.New(&out, time.Now())
	data, err := fetchConfig(context.Background(), remote, con)
	if err != nil {
		t.Fatal(err)
	}
	stack.add(image.Arg(image.ParamConfig, remote), data)
	cfg, err := stack.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Role != node.RoleWorker || cfg.Hostname != "cmd" || cfg.Storage.StateDisk != "/dev/vdb" {
		t.Errorf("got %+v", cfg)
	}
	if !strings.Contains(out.String(), "attempt 2: HTTP 503") {
		t.Errorf("retries not reported:\n%s", out.String())
	}

	// A server that never answers: fetchConfig ends with its context.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := fetchConfig(ctx, "http://127.0.0.1:1/none", con); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("unreachable server: %v", err)
	}
}

// kiln.config= values that can never work are refused before the boot
// waits for the network.
func TestConfigRemoteRefused(t *testing.T) {
	for v, want := range map[string]string{
		"https://10.0.2.2/node.yaml": "config kiln.config=https://10.0.2.2/node.yaml: https is not supported: the node fetches kiln.config= over plain HTTP only; use http://",
		"HTTPS://10.0.2.2/node.yaml": "https is not supported",
		"http://[::1":                "config kiln.config=http://[::1: not a URL: missing ']' in host",
		"http:///node.yaml":          "not a URL: no host",
		"http://:80/node.yaml":       "not a URL: no host",
	} {
		_, _, err := localConfig(configInputs{ReadFile: fakeRoot(t, nil), Cmdline: cmdline.Parse("kiln.config=" + v)})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", v, err, want)
		}
	}
	_, remote, err := localConfig(configInputs{ReadFile: fakeRoot(t, nil), Cmdline: cmdline.Parse("kiln.config=HTTP://10.0.2.2:8080/n.yaml")})
	if err != nil || remote != "HTTP://10.0.2.2:8080/n.yaml" {
		t.Errorf("upper-case http: %q %v", remote, err)
	}
}

// A config file that never ends is refused at the cap, naming it.
func TestConfigFileCapped(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.Symlink("/dev/zero", p); err != nil {
		t.Fatal(err)
	}
	_, _, err := localConfig(configInputs{Cmdline: cmdline.Parse("kiln.config=" + p)})
	if err == nil || err.Error() != "config kiln.config="+p+": read "+p+": larger than 4 MiB, the most kiln reads from such a file" {
		t.Errorf("%v", err)
	}
}
