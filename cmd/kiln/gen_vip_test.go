package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln/configs/cluster"
	"kiln/pki"
)

// kiln gen cluster --vip makes the virtual IP the cluster's endpoint: the
// admin kubeconfig and every worker image (cluster.yaml) point at it.
func TestGenClusterVIP(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	code, out, errOut := kiln(t, "gen", "cluster", "--out", dir, "--vip", "10.0.0.5")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	cl, err := cluster.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, cluster.AdminKubeconfigFile))
	if err != nil {
		t.Fatal(err)
	}
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		t.Fatal(err)
	}
	if cl.Endpoint != "https://10.0.0.5:6443" || kc.Server != cl.Endpoint {
		t.Errorf("endpoint %s, admin.kubeconfig %s; want the VIP's", cl.Endpoint, kc.Server)
	}
	if !strings.Contains(out, "controlPlane.vip: 10.0.0.5") {
		t.Errorf("output does not say to set controlPlane.vip:\n%s", out)
	}

	for _, tc := range []struct {
		endpoint    string
		given       bool
		want, fails string
	}{
		{"127.0.0.1:6443", false, "10.0.0.5:6443", ""},
		{"10.0.0.5:443", true, "https://10.0.0.5:443", ""},
		{"https://10.0.0.5:6443", true, "https://10.0.0.5:6443", ""},
		{"10.0.0.10:6443", true, "", "with a virtual IP the endpoint is the VIP"},
		{"api.example:6443", true, "", "with a virtual IP the endpoint is the VIP"},
	} {
		got, err := vipEndpoint("10.0.0.5", tc.endpoint, tc.given)
		if tc.fails != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fails) {
				t.Errorf("--endpoint %s: %q, %v; want %q", tc.endpoint, got, err, tc.fails)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("--endpoint %s (given %t): %q, %v; want %s", tc.endpoint, tc.given, got, err, tc.want)
		}
	}
	for _, bad := range []string{"fd00::5", "vip.example", "10.0.0.5/24"} {
		if _, err := vipEndpoint(bad, "", false); err == nil || !strings.Contains(err.Error(), "want an IPv4 address") {
			t.Errorf("--vip %s: %v", bad, err)
		}
	}
	if code, _, errOut := kiln(t, "gen", "cluster", "--out", filepath.Join(t.TempDir(), "d"), "--vip", "10.0.0.5", "--endpoint", "10.0.0.10:6443"); code != 2 || !strings.Contains(errOut, "endpoint is the VIP") {
		t.Errorf("--vip with another --endpoint: exit %d, %q", code, errOut)
	}
}
