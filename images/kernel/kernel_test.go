package kernel

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const testDep = `kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/net/vxlan/vxlan.ko: kernel/net/ipv6/ip6_udp_tunnel.ko kernel/net/ipv4/udp_tunnel.ko
kernel/net/ipv6/ip6_udp_tunnel.ko:
kernel/net/ipv4/udp_tunnel.ko:
kernel/drivers/foo/dash-name.ko.xz:
`

func testTable(t *testing.T) *depTable {
	t.Helper()
	byName, err := parseModulesDep(strings.NewReader(testDep))
	if err != nil {
		t.Fatal(err)
	}
	tb := &depTable{byName: byName, byPath: map[string]modDep{}, builtin: map[string]bool{"virtio_net": true}}
	for _, d := range byName {
		tb.byPath[d.path] = d
	}
	return tb
}

func TestClosureOrder(t *testing.T) {
	tb := testTable(t)
	got, err := tb.closure([]string{"br_netfilter", "overlay", "bridge", "virtio-net", "vxlan", "dash_name"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/net/llc/llc.ko",
		"kernel/net/802/stp.ko",
		"kernel/net/bridge/bridge.ko",
		"kernel/net/bridge/br_netfilter.ko",
		"kernel/fs/overlayfs/overlay.ko",
		"kernel/net/ipv4/udp_tunnel.ko",
		"kernel/net/ipv6/ip6_udp_tunnel.ko",
		"kernel/drivers/net/vxlan/vxlan.ko",
		"kernel/drivers/foo/dash-name.ko.xz",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("closure:\n got %q\nwant %q", got, want)
	}
}

func TestClosureUnknown(t *testing.T) {
	tb := testTable(t)
	if _, err := tb.closure([]string{"overlay", "nosuchmod"}); err == nil || !strings.Contains(err.Error(), "nosuchmod") {
		t.Fatalf("want an error naming nosuchmod, got %v", err)
	}
}

func TestNames(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/a/b/foo-bar.ko":    "foo_bar",
		"foo-bar":                  "foo_bar",
		"kernel/x/nf_tables.ko.xz": "nf_tables",
		"zstd.ko.zst":              "zstd",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
	if p, _ := PackageName("6.1.0-56", Cloud); p != "linux-image-6.1.0-56-cloud-amd64" {
		t.Errorf("cloud package %q", p)
	}
	if p, _ := PackageName("6.1.0-56", Generic); p != "linux-image-6.1.0-56-amd64" {
		t.Errorf("generic package %q", p)
	}
	if _, err := ParseFlavour("rt"); err == nil {
		t.Error("ParseFlavour(rt) should fail")
	}
}

// testLog writes Fetch's progress lines to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestWantedVersion(t *testing.T) {
	t.Setenv(VersionEnv, "")
	if v := wantedVersion(); v != Version {
		t.Errorf("without %s: %q, want the pin %q", VersionEnv, v, Version)
	}
	t.Setenv(VersionEnv, " 6.1.0-99 ")
	if v := wantedVersion(); v != "6.1.0-99" {
		t.Errorf("%s=6.1.0-99: %q", VersionEnv, v)
	}
	// A bad version is refused before any apt work.
	t.Setenv(VersionEnv, "6.1")
	var logged strings.Builder
	_, err := Fetch(context.Background(), Options{CacheDir: t.TempDir(), Progress: &logged})
	if err == nil || !strings.Contains(err.Error(), `bad version "6.1"`) || logged.Len() != 0 {
		t.Errorf("%s=6.1: %v (logged %q)", VersionEnv, err, logged.String())
	}
}

// fetchForTest fetches a real kernel. It needs apt-get and dpkg-deb (a Debian
// host) and Debian's archive; the result is cached in out/cache.
func fetchForTest(t *testing.T, f Flavour) *Kernel {
	t.Helper()
	if testing.Short() {
		t.Skip("fetches the kernel with apt; skipped with -short")
	}
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: not a Debian host, cannot fetch the kernel", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	k, err := Fetch(ctx, Options{CacheDir: DefaultCacheDir(), Flavour: f, Progress: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Fetch(%s) took %s: %+v", f, time.Since(start).Round(time.Millisecond), *k)
	return k
}

func TestFetchCloud(t *testing.T) {
	k := fetchForTest(t, Cloud)
	fi, err := os.Stat(k.Vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("vmlinuz %.1f MB, modules dir %.1f MB", float64(fi.Size())/1e6, float64(duSize(t, k.ModulesDir))/1e6)
	if !strings.HasPrefix(k.Release, k.Version) || !strings.HasSuffix(k.Release, "-cloud-amd64") {
		t.Errorf("release %q", k.Release)
	}

	// The second call must find the cache and do no apt work (it logs
	// nothing and returns at once).
	var logged strings.Builder
	start := time.Now()
	k2, err := Fetch(context.Background(), Options{CacheDir: DefaultCacheDir(), Flavour: Cloud, Progress: &logged})
	if err != nil {
		t.Fatal(err)
	}
	if logged.Len() != 0 || *k2 != *k {
		t.Errorf("second Fetch was not served from the cache: logged %q, %+v", logged.String(), *k2)
	}
	t.Logf("cached Fetch took %s", time.Since(start))

	// kiln's initramfs is zstd-compressed: the kernel must support it.
	if v, ok, err := k.Config("CONFIG_RD_ZSTD"); err != nil || !ok || v != "y" {
		t.Errorf("CONFIG_RD_ZSTD = %q, %v, %v; want y", v, ok, err)
	}

	mods, err := k.ModuleClosure("br_netfilter", "overlay", "vxlan")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("closure: %q", mods)
	idx := func(name string) int {
		for i, m := range mods {
			if ModuleName(m) == name {
				return i
			}
		}
		t.Fatalf("%s missing from closure %q", name, mods)
		return -1
	}
	if !(idx("bridge") < idx("br_netfilter") && idx("stp") < idx("bridge") && idx("llc") < idx("stp")) {
		t.Errorf("closure not in dependency order: %q", mods)
	}
	idx("overlay")
	idx("vxlan")
	for _, m := range mods {
		if _, err := os.Stat(filepath.Join(k.ModulesDir, m)); err != nil {
			t.Error(err)
		}
	}
	if _, err := k.ModuleClosure("no_such_module_kiln"); err == nil {
		t.Error("unknown module accepted")
	}
	files, err := k.ModuleIndexFiles()
	if err != nil || !slices.Contains(files, "modules.dep") {
		t.Errorf("ModuleIndexFiles = %q, %v", files, err)
	}
}

// TestFetchGeneric downloads the 70 MB generic kernel (400 MB extracted), so
// it only runs when KILN_TEST_GENERIC_KERNEL=1.
func TestFetchGeneric(t *testing.T) {
	if os.Getenv("KILN_TEST_GENERIC_KERNEL") != "1" {
		t.Skip("set KILN_TEST_GENERIC_KERNEL=1 to fetch the generic kernel (70 MB download)")
	}
	k := fetchForTest(t, Generic)
	if !strings.HasSuffix(k.Release, "-amd64") || strings.Contains(k.Release, "cloud") {
		t.Errorf("release %q", k.Release)
	}
	// Real NIC drivers are what the generic flavour is for.
	mods, err := k.ModuleClosure("e1000e", "ixgbe")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("closure: %q", mods)
}

func duSize(t *testing.T, dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
