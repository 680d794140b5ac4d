// Package kernel fetches the pinned Debian kernel for kiln images without
// installing it on the host: `apt-get download` of the linux-image package
// into a cache directory, then `dpkg-deb -x` (no maintainer scripts, no
// initramfs-tools, no root mounts). It returns the vmlinuz and the modules
// tree, and resolves module dependencies from modules.dep so that the image
// builder can copy exactly the .ko files a set of modules needs.
package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"kiln/internal/fsutil"
)

// Version is the pinned Debian kernel ABI version (the part of the package
// name between "linux-image-" and the flavour suffix). It is the one place
// to change when Debian ships a new 6.1 kernel. The one way to fetch
// another without rebuilding kiln is the environment variable VersionEnv.
const Version = "6.1.0-56"

// VersionEnv is the environment variable that replaces Version for every
// Fetch: an ABI version such as 6.1.0-57, or "latest" for the newest 6.1
// ABI in the host's apt lists. An environment variable, not an option,
// because it reaches every fetch (kiln build and the tests of the image
// builder, qemu and init/boot) with no flag plumbed through each of them.
const VersionEnv = "KILN_KERNEL_VERSION"

// Flavour selects the Debian kernel build.
type Flavour string

const (
	// Cloud is linux-image-<ver>-cloud-amd64: virtio and the usual cloud
	// devices, small; the default for VMs.
	Cloud Flavour = "cloud"
	// Generic is linux-image-<ver>-amd64: every driver, for physical servers
	// with real NICs and disk controllers.
	Generic Flavour = "generic"
)

// ParseFlavour maps a user-supplied name ("cloud", "generic", "" = cloud) to
// a Flavour.
func ParseFlavour(s string) (Flavour, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "cloud":
		return Cloud, nil
	case "generic", "amd64":
		return Generic, nil
	}
	return "", fmt.Errorf("kernel: unknown flavour %q (want cloud or generic)", s)
}

// suffix is the flavour part of the Debian package and of `uname -r`.
func (f Flavour) suffix() (string, error) {
	switch f {
	case Cloud, "":
		return "cloud-amd64", nil
	case Generic:
		return "amd64", nil
	}
	return "", fmt.Errorf("kernel: unknown flavour %q", string(f))
}

// Release returns the kernel release (`uname -r`, the lib/modules directory
// name) for an ABI version and a flavour, e.g. "6.1.0-56-cloud-amd64".
func Release(version string, f Flavour) (string, error) {
	s, err := f.suffix()
	if err != nil {
		return "", err
	}
	return version + "-" + s, nil
}

// PackageName returns the Debian package name, e.g.
// "linux-image-6.1.0-56-cloud-amd64".
func PackageName(version string, f Flavour) (string, error) {
	r, err := Release(version, f)
	if err != nil {
		return "", err
	}
	return "linux-image-" + r, nil
}

// Kernel is an extracted Debian kernel package.
type Kernel struct {
	Version    string  // ABI version, e.g. "6.1.0-56"
	Release    string  // uname -r, e.g. "6.1.0-56-cloud-amd64"
	Package    string  // Debian package name
	DebVersion string  // Debian package version, e.g. "6.1.192-2"
	Flavour    Flavour //
	Root       string  // the extracted package tree
	Vmlinuz    string  // absolute path of boot/vmlinuz-<release>
	ModulesDir string  // absolute path of lib/modules/<release>
	ConfigFile string  // absolute path of boot/config-<release>
}

// Options says which kernel Fetch fetches, where it keeps it and where
// it reports its progress. The zero value fetches the cloud kernel into
// DefaultCacheDir silently.
type Options struct {
	// CacheDir holds the downloaded package and the extracted tree (under
	// CacheDir/kernel); empty means DefaultCacheDir().
	CacheDir string
	// Flavour is the Debian kernel build; empty means Cloud.
	Flavour Flavour
	// Progress receives one line per step ("kernel: downloading ...");
	// nil discards them. A fetch served from the cache writes nothing.
	Progress io.Writer
}

// progress writes Options.Progress's lines.
type progress struct{ w io.Writer }

func (p progress) logf(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, "kernel: "+format+"\n", args...)
	}
}

// stamp marks an extraction as complete.
const stamp = ".kiln-extracted"

// Fetch returns the pinned kernel (Version, or $KILN_KERNEL_VERSION) of
// the options' flavour, downloading and extracting it under
// CacheDir/kernel when it is not there yet. A second call finds the
// extracted tree and does no apt work at all. Concurrent callers (several
// test binaries) are serialized by a lock file.
func Fetch(ctx context.Context, opts Options) (*Kernel, error) {
	if opts.Flavour == "" {
		opts.Flavour = Cloud
	}
	v := wantedVersion()
	if v == "latest" {
		latest, err := LatestAvailable(ctx, opts.Flavour)
		if err != nil {
			return nil, err
		}
		v = latest
	}
	return fetch(ctx, v, opts)
}

// wantedVersion is $KILN_KERNEL_VERSION, or Version when it is not set.
func wantedVersion() string {
	if env := strings.TrimSpace(os.Getenv(VersionEnv)); env != "" {
		return env
	}
	return Version
}

// fetch is Fetch for an ABI version.
func fetch(ctx context.Context, version string, opts Options) (*Kernel, error) {
	flavour, cacheDir, p := opts.Flavour, opts.CacheDir, progress{opts.Progress}
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+-[0-9]+$`).MatchString(version) {
		return nil, fmt.Errorf("kernel: bad version %q (want an ABI version like %s)", version, Version)
	}
	pkg, err := PackageName(version, flavour)
	if err != nil {
		return nil, err
	}
	release, _ := Release(version, flavour)
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	base, err := filepath.Abs(filepath.Join(cacheDir, "kernel"))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	dest := filepath.Join(base, pkg)

	// Fast path: already extracted.
	if k, err := load(dest, version, release, pkg, flavour); err == nil {
		return k, nil
	}

	unlock, err := lockFile(ctx, p, filepath.Join(base, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Another process may have finished while we waited for the lock.
	if k, err := load(dest, version, release, pkg, flavour); err == nil {
		return k, nil
	}

	// Leftovers of an interrupted fetch (we hold the lock, so no one else
	// is using them).
	for _, pat := range []string{".extract-*", filepath.Join("debs", ".download-*")} {
		old, _ := filepath.Glob(filepath.Join(base, pat))
		for _, o := range old {
			os.RemoveAll(o)
		}
	}

	start := time.Now()
	deb, err := download(ctx, p, base, pkg)
	if err != nil {
		return nil, err
	}
	if err := extract(ctx, p, deb, dest, release); err != nil {
		return nil, err
	}
	k, err := load(dest, version, release, pkg, flavour)
	if err != nil {
		return nil, err
	}
	p.logf("%s ready in %s (%s)", pkg, time.Since(start).Round(100*time.Millisecond), k.Vmlinuz)
	return k, nil
}

func load(dest, version, release, pkg string, flavour Flavour) (*Kernel, error) {
	st, err := os.ReadFile(filepath.Join(dest, stamp))
	if err != nil {
		return nil, err
	}
	k := &Kernel{
		Version:    version,
		Release:    release,
		Package:    pkg,
		DebVersion: strings.TrimSpace(string(st)),
		Flavour:    flavour,
		Root:       dest,
		Vmlinuz:    filepath.Join(dest, "boot", "vmlinuz-"+release),
		ModulesDir: filepath.Join(dest, "lib", "modules", release),
		ConfigFile: filepath.Join(dest, "boot", "config-"+release),
	}
	for _, p := range []string{k.Vmlinuz, filepath.Join(k.ModulesDir, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("kernel: extracted %s is incomplete: %w", pkg, err)
		}
	}
	return k, nil
}

// download runs `apt-get download pkg` in base/debs and returns the .deb.
// When apt does not know the package (no apt lists yet on a fresh machine),
// it runs `apt-get update` once and tries again.
func download(ctx context.Context, p progress, base, pkg string) (string, error) {
	debs := filepath.Join(base, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", err
	}
	if deb, ok := findDeb(debs, pkg); ok {
		p.logf("using cached %s", filepath.Base(deb))
		return deb, nil
	}
	tmp, err := os.MkdirTemp(debs, ".download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	// apt drops privileges to _apt for downloads when it can; let it read
	// and write the temp dir so it does not warn about an unsandboxed
	// download.
	_ = os.Chmod(tmp, 0o777)

	p.logf("downloading %s with apt-get download", pkg)
	out, err := run(ctx, tmp, "apt-get", "download", pkg)
	if err != nil && notFound(out) {
		p.logf("apt does not know %s; running apt-get update", pkg)
		if uout, uerr := run(ctx, "", "apt-get", "update"); uerr != nil {
			return "", fmt.Errorf("kernel: apt-get update: %v\n%s", uerr, uout)
		}
		out, err = run(ctx, tmp, "apt-get", "download", pkg)
	}
	if err != nil {
		hint := ""
		if notFound(out) {
			if avail, aerr := Available(ctx); aerr == nil && len(avail) > 0 {
				hint = fmt.Sprintf("\nversions in apt lists: %s (set %s or change kernel.Version)", strings.Join(avail, " "), VersionEnv)
			}
		}
		return "", fmt.Errorf("kernel: apt-get download %s: %v\n%s%s", pkg, err, strings.TrimSpace(out), hint)
	}
	deb, ok := findDeb(tmp, pkg)
	if !ok {
		return "", fmt.Errorf("kernel: apt-get download %s produced no .deb\n%s", pkg, out)
	}
	final := filepath.Join(debs, filepath.Base(deb))
	if err := os.Rename(deb, final); err != nil {
		return "", err
	}
	if fi, err := os.Stat(final); err == nil {
		p.logf("downloaded %s (%.1f MB)", filepath.Base(final), float64(fi.Size())/1e6)
	}
	return final, nil
}

// notFound reports whether apt's output says it does not know a package.
func notFound(out string) bool {
	return strings.Contains(out, "Unable to locate package") || strings.Contains(out, "Can't select") ||
		strings.Contains(out, "has no installation candidate")
}

func findDeb(dir, pkg string) (string, bool) {
	m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*_amd64.deb"))
	if len(m) == 0 {
		return "", false
	}
	sort.Strings(m)
	return m[len(m)-1], true
}

// extract unpacks deb into dest via a temp dir next to it, so that dest is
// either absent or complete. The package does not ship modules.dep and the
// other depmod indexes (its postinst makes them), so extract runs depmod on
// the extracted tree.
func extract(ctx context.Context, p progress, deb, dest, release string) error {
	p.logf("extracting %s", filepath.Base(deb))
	debVersion, err := run(ctx, "", "dpkg-deb", "-f", deb, "Version")
	if err != nil {
		return fmt.Errorf("kernel: dpkg-deb -f %s: %v\n%s", deb, err, debVersion)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dest), ".extract-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if out, err := run(ctx, "", "dpkg-deb", "-x", deb, tmp); err != nil {
		return fmt.Errorf("kernel: dpkg-deb -x %s: %v\n%s", deb, err, out)
	}
	p.logf("running depmod for %s", release)
	depmod, err := exec.LookPath("depmod")
	if err != nil {
		depmod = "/usr/sbin/depmod" // root's PATH may lack /usr/sbin
		if _, serr := os.Stat(depmod); serr != nil {
			return fmt.Errorf("kernel: depmod not found (install kmod): %w", err)
		}
	}
	if out, err := run(ctx, "", depmod, "-b", tmp, release); err != nil {
		return fmt.Errorf("kernel: depmod -b %s %s: %v\n%s", tmp, release, err, out)
	}
	if err := os.WriteFile(filepath.Join(tmp, stamp), []byte(strings.TrimSpace(debVersion)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.RemoveAll(dest); err != nil {
		return err
	}
	return os.Rename(tmp, dest)
}

func run(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// lockFile takes an exclusive flock on path, polling so that ctx can cancel
// the wait.
func lockFile(ctx context.Context, p progress, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	waited := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("kernel: lock %s: %w", path, err)
		}
		if !waited {
			p.logf("waiting for another kiln process fetching the kernel (%s)", path)
			waited = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// Available lists the 6.1 kernel ABI versions (e.g. "6.1.0-56") that the
// host's apt lists know, oldest first.
func Available(ctx context.Context) ([]string, error) {
	out, err := run(ctx, "", "apt-cache", "pkgnames", "linux-image-6.1.0-")
	if err != nil {
		return nil, fmt.Errorf("kernel: apt-cache pkgnames: %v\n%s", err, out)
	}
	re := regexp.MustCompile(`^linux-image-(6\.1\.0-[0-9]+)-(cloud-)?amd64$`)
	seen := map[string]bool{}
	var vs []string
	for _, l := range strings.Split(out, "\n") {
		if m := re.FindStringSubmatch(strings.TrimSpace(l)); m != nil && !seen[m[1]] {
			seen[m[1]] = true
			vs = append(vs, m[1])
		}
	}
	sort.Slice(vs, func(i, j int) bool { return abiNum(vs[i]) < abiNum(vs[j]) })
	return vs, nil
}

// LatestAvailable returns the newest 6.1 ABI version for which the host's apt
// lists have a package of the given flavour.
func LatestAvailable(ctx context.Context, flavour Flavour) (string, error) {
	vs, err := Available(ctx)
	if err != nil {
		return "", err
	}
	for i := len(vs) - 1; i >= 0; i-- {
		pkg, err := PackageName(vs[i], flavour)
		if err != nil {
			return "", err
		}
		if out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", pkg); err == nil && strings.Contains(out, "Package: "+pkg) {
			return vs[i], nil
		}
	}
	return "", fmt.Errorf("kernel: no linux-image-6.1.0-*-%s package in apt lists (run apt-get update)", flavour)
}

func abiNum(v string) int {
	n := 0
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		fmt.Sscanf(v[i+1:], "%d", &n)
	}
	return n
}

// Config returns the value of a kernel config symbol from boot/config-*
// ("y", "m", a string or number), and false when it is not set.
func (k *Kernel) Config(symbol string) (string, bool, error) {
	f, err := os.Open(k.ConfigFile)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	if !strings.HasPrefix(symbol, "CONFIG_") {
		symbol = "CONFIG_" + symbol
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		if v, ok := strings.CutPrefix(l, symbol+"="); ok {
			return strings.Trim(v, `"`), true, nil
		}
	}
	return "", false, sc.Err()
}

// DefaultCacheDir is $KILN_CACHE_DIR, or out/cache in the enclosing Go module
// (the directory holding go.mod, found from the working directory upwards),
// or out/cache in the working directory.
func DefaultCacheDir() string {
	if d := os.Getenv("KILN_CACHE_DIR"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		return filepath.Join("out", "cache")
	}
	for d := wd; ; {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "out", "cache")
		}
		parent := filepath.Dir(d)
		if parent == d {
			break
		}
		d = parent
	}
	return filepath.Join(wd, "out", "cache")
}

// CopyVmlinuz copies the kernel image to dst (e.g. into an image output
// directory).
func (k *Kernel) CopyVmlinuz(dst string) error {
	_, err := fsutil.CopyFile(dst, k.Vmlinuz, 0o644)
	return err
}
