package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/nodeapi"
	"kiln/qemu/vmcluster"
)

func TestIsAddress(t *testing.T) {
	for s, want := range map[string]bool{
		"kiln-worker-1": false, "node.example": false, "10.0.0.1": true, "10.0.0.1:10260": true,
		"::1": true, "[::1]": true, "fe80::1%eth0": true, "host:1": true, "a b": true,
	} {
		if got := isAddress(s); got != want {
			t.Errorf("isAddress(%q) = %v", s, got)
		}
	}
}

func TestPickNode(t *testing.T) {
	nodes, err := vmcluster.ParseNodeList(strings.NewReader(`{"items":[
	 {"metadata":{"name":"kiln-worker-1"},"status":{"addresses":[{"type":"Hostname","address":"kiln-worker-1"},{"type":"InternalIP","address":"10.120.0.11"}]}},
	 {"metadata":{"name":"kiln-master"},"status":{"addresses":[{"type":"InternalIP","address":"10.120.0.10"}]}},
	 {"metadata":{"name":"bare"},"status":{}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	tg, err := pickNode(nodes, "kiln-worker-1")
	if err != nil || tg.Addr != "10.120.0.11:10260" || tg.Name != "kiln-worker-1" {
		t.Errorf("found %+v %v", tg, err)
	}
	if _, err := pickNode(nodes, "nope"); err == nil || !strings.Contains(err.Error(), "no node nope; the cluster's nodes: bare, kiln-master, kiln-worker-1") {
		t.Errorf("not found: %v", err)
	}
	if _, err := pickNode(nodes, "bare"); err == nil || !strings.Contains(err.Error(), "no InternalIP") {
		t.Errorf("no address: %v", err)
	}
}

func TestConfirmReset(t *testing.T) {
	for _, c := range []struct {
		name          string
		in            string
		terminal, yes bool
		given, node   string
		want, err     string
	}{
		{"yes with a name", "", false, true, "w1", "w1", "w1", ""},
		{"yes with an address", "", false, true, "10.0.0.5", "10.0.0.5", "", "--yes needs --node to be the node's name"},
		{"no terminal", "", false, false, "w1", "w1", "", "give --yes"},
		{"typed right", "w1\n", true, false, "w1", "w1", "w1", ""},
		{"typed wrong", "w2\n", true, false, "w1", "w1", "", `not confirmed: "w2" is not w1`},
		{"typed nothing", "", true, false, "w1", "w1", "", "nothing typed"},
		{"address: the typed name goes to the node", "w1\n", true, false, "10.0.0.5", "10.0.0.5", "w1", ""},
	} {
		var out bytes.Buffer
		got, err := confirmReset(strings.NewReader(c.in), &out, c.terminal, c.yes, c.given, c.node)
		if got != c.want || (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: %q %v, want %q %q", c.name, got, err, c.want, c.err)
		}
	}
}

// The node commands parse their flags and want --node.
func TestNodeCommandsUsage(t *testing.T) {
	for _, args := range [][]string{
		{"logs", "etcd"}, {"dmesg"}, {"reboot"}, {"shutdown"}, {"reset", "--yes"},
		{"logs", "--node", "10.0.0.1"}, {"logs", "--node", "10.0.0.1", "etcd", "--tail", "-1"},
		{"dmesg", "--node", "a b"}, {"certs"}, {"certs", "--node", "10.0.0.1", "extra"},
	} {
		if code, _, errOut := kiln(t, append(args, "--cluster", t.TempDir())...); code != 2 || errOut == "" {
			t.Errorf("%q: exit %d, %q", args, code, errOut)
		}
	}
	for _, cmd := range []string{"logs", "dmesg", "reboot", "shutdown", "reset", "status", "certs"} {
		if code, out, _ := kiln(t, cmd, "--help"); code != 0 || !strings.Contains(out, "--node") || !strings.Contains(out, "Examples:") {
			t.Errorf("%s --help: exit %d, %q", cmd, code, out)
		}
	}
}

// kiln logs and reboot reach a node API that shows the cluster CA's
// certificate, and refuse one that does not.
func TestNodeCommandsTalk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	if code, _, errOut := kiln(t, "gen", "cluster", "--out", dir); code != 0 {
		t.Fatal(errOut)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/logs/etcd":
			fmt.Fprintf(w, "etcd line (%s)\n", r.URL.RawQuery)
		case r.Method == http.MethodGet && r.URL.Path == nodeapi.PathCerts:
			fmt.Fprintln(w, `{"node":"n1","validity":"3m0s","certs":[{"name":"etcd serving","path":"/var/lib/kiln/pki/etcd/server.crt","subject":"CN=n1","notAfter":"2030-01-02T03:04:05Z","renewAt":"2029-01-01T00:00:00Z","renewedBy":"node"}]}`)
		case r.Method == http.MethodPost && r.URL.Path == nodeapi.PathReboot:
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprintln(w, "node n1: rebooting")
		default:
			http.Error(w, "no", http.StatusForbidden)
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{nodeCert(t, dir, "n1", "127.0.0.1")}}
	srv.StartTLS()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	if code, out, errOut := kiln(t, "logs", "--node", addr, "--cluster", dir, "etcd", "--tail", "5"); code != 0 || out != "etcd line (tail=5)\n" {
		t.Errorf("logs: exit %d, %q %q", code, out, errOut)
	}
	if code, out, errOut := kiln(t, "reboot", "--node", addr, "--cluster", dir); code != 0 || out != "node n1: rebooting\n" {
		t.Errorf("reboot: exit %d, %q %q", code, out, errOut)
	}
	if code, out, errOut := kiln(t, "certs", "--node", addr, "--cluster", dir); code != 0 || !strings.Contains(out, "node n1, certificates.validity 3m0s") ||
		!strings.Contains(out, "etcd serving") || !strings.Contains(out, "2030-01-02T03:04:05Z") || !strings.Contains(out, "CN=n1") {
		t.Errorf("certs: exit %d, %q %q", code, out, errOut)
	}
	if code, _, errOut := kiln(t, "dmesg", "--node", addr, "--cluster", dir); code != 1 || !strings.Contains(errOut, "403 Forbidden") {
		t.Errorf("forbidden: exit %d, %q", code, errOut)
	}
	other := filepath.Join(t.TempDir(), "other")
	if code, _, errOut := kiln(t, "gen", "cluster", "--out", other); code != 0 {
		t.Fatal(errOut)
	}
	if code, _, errOut := kiln(t, "logs", "--node", addr, "--cluster", other, "etcd"); code != 1 || !strings.Contains(errOut, "not this cluster's CA") {
		t.Errorf("another cluster's node: exit %d, %q", code, errOut)
	}
}
