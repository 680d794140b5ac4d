package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"kiln/configs/cluster"
	"kiln/pki"
)

// Bad --node values are usage errors with a message, never a crash.
func TestStatusBadNode(t *testing.T) {
	for node, want := range map[string]string{
		"not a host":             `--node "not a host": the host is neither an IP address nor a DNS name`,
		"[::1":                   `--node "[::1": the host is neither an IP address nor a DNS name`,
		"::1]":                   `--node "::1]": the host is neither an IP address nor a DNS name`,
		"10.0.0.1:99999":         `--node "10.0.0.1:99999": the port is not a number from 1 to 65535`,
		"10.0.0.1:":              `the port is not a number from 1 to 65535`,
		":10260":                 `--node ":10260": no host`,
		"[]":                     `no host`,
		"host/path":              `neither an IP address nor a DNS name`,
		"https://10.0.0.1":       `--node "https://10.0.0.1": a URL, not an address`,
		"a%zz":                   `neither an IP address nor a DNS name`,
		"::1%#":                  `--node "::1%#": the IPv6 zone is not an interface name`,
		strings.Repeat("a", 1e6): `--node "` + strings.Repeat("a", 64) + `"… (1000000 bytes): the host is neither`,
	} {
		code, out, errOut := kiln(t, "status", "--node", node, "--cluster", t.TempDir())
		if code != 2 || out != "" || !strings.Contains(errOut, want) || len(errOut) > 600 {
			t.Errorf("--node %.40q: exit %d, stderr %.600q, want %q", node, code, errOut, want)
		}
	}
	for node, want := range map[string]string{
		"10.0.0.1":       "10.0.0.1:10260",
		"10.0.0.1:1":     "10.0.0.1:1",
		"::1":            "[::1]:10260",
		"[::1]":          "[::1]:10260",
		"[::1]:7":        "[::1]:7",
		"node-1.example": "node-1.example:10260",
		"fe80::1%eth0":   "[fe80::1%eth0]:10260",
	} {
		if got, err := nodeHostPort(node); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", node, got, err, want)
		}
	}
}

// The node's answer is read up to a cap; a bad answer is an error, never
// a crash, and an error answer is echoed shortened.
func TestStatusBadAnswers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	if code, _, errOut := kiln(t, "gen", "cluster", "--out", dir); code != 0 {
		t.Fatal(errOut)
	}
	var mu sync.Mutex
	var answer func(w http.ResponseWriter)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		a := answer
		mu.Unlock()
		a(w)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{nodeCert(t, dir, "node-1", "127.0.0.1")}}
	srv.StartTLS()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter)
		want   string
	}{
		{"huge", func(w http.ResponseWriter) {
			chunk := []byte(strings.Repeat("x", 1<<20))
			for range 9 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, fmt.Sprintf("node %s: the answer is larger than 8 MiB, more than a node's status can be", addr)},
		{"not json", func(w http.ResponseWriter) { fmt.Fprint(w, "{[") }, fmt.Sprintf("node %s: decoding status:", addr)},
		{"wrong types", func(w http.ResponseWriter) { fmt.Fprint(w, `{"services":[{"pid":"x"}]}`) }, "decoding status:"},
		{"error answer", func(w http.ResponseWriter) {
			http.Error(w, strings.Repeat("e", 1<<20), http.StatusForbidden)
		}, "403 Forbidden: " + strings.Repeat("e", 512) + "… (1048576 bytes)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			answer = tc.answer
			mu.Unlock()
			code, _, errOut := kiln(t, "status", "--node", addr, "--cluster", dir)
			if code != 1 || !strings.Contains(errOut, tc.want) || len(errOut) > 1000 {
				t.Errorf("exit %d, stderr %.1000q, want %q", code, errOut, tc.want)
			}
		})
	}
	// A status with nothing in it is a status.
	mu.Lock()
	answer = func(w http.ResponseWriter) { fmt.Fprint(w, `{}`) }
	mu.Unlock()
	if code, out, errOut := kiln(t, "status", "--node", addr, "--cluster", dir); code != 0 || !strings.Contains(out, "COMPONENT") {
		t.Errorf("empty status: exit %d, %q %q", code, out, errOut)
	}
	// Missing credentials name the file.
	if code, _, errOut := kiln(t, "status", "--node", addr, "--cluster", t.TempDir()); code != 1 || !strings.Contains(errOut, "admin credentials: ") || !strings.Contains(errOut, "admin.kubeconfig: no such file") {
		t.Errorf("no cluster: exit %d, %q", code, errOut)
	}
}

// nodeHostPort never panics, and what it accepts makes a request URL.
func FuzzNodeHostPort(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "[::1", "::1]", "[::1]:7", "a b", "fe80::1%eth0", "h:0", "[[::1]]", "%", ":", "::%#"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hp, err := nodeHostPort(s)
		if err != nil {
			return
		}
		u := &url.URL{Scheme: "https", Host: hp, Path: "/status"}
		if _, err := http.NewRequest(http.MethodGet, u.String(), nil); err != nil {
			t.Errorf("%q accepted as %q: %v", s, hp, err)
		}
	})
}

// nodeCert is a node's serving certificate of the cluster in dir, as its
// kubelet has it: for its name and addresses.
func nodeCert(t *testing.T, dir, name string, ips ...string) tls.Certificate {
	t.Helper()
	cl, err := cluster.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	req := pki.CertRequest{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}, DNSNames: []string{name}, Server: true}
	for _, ip := range ips {
		req.IPs = append(req.IPs, net.ParseIP(ip))
	}
	certPEM, keyPEM, err := cl.CA.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
