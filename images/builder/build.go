// Package builder turns kiln's node binary into bootable images: it fetches
// the pinned Debian kernel, assembles a reproducible initramfs (the node
// binary as /init, the node config, the cluster material the role needs,
// kernel modules, a few userspace tools) and then runs the requested output
// formats (registry: kernel, iso, qcow2, pxe), each writing into one output
// directory.
//
// An image directory looks like this after a full build of a master:
//
//	out/master/
//	  vmlinuz, initramfs.img, cmdline    kernel format (direct boot)
//	  master.iso                         iso format (BIOS and UEFI)
//	  master.qcow2                       qcow2 format (boot partition + state partition)
//	  pxe/{vmlinuz,initramfs.img,boot.ipxe}
//	  image.json                         manifest read by "kiln run"
package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"kiln/configs/cluster"
	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/initramfs"
	"kiln/images/kernel"
	"kiln/internal/fsutil"
)

// DefaultDiskSize is the virtual size of the qcow2 disk: the boot partition
// plus the state partition (the rest). The qcow2 file is sparse: it takes
// about the size of the boot partition on the host until the node writes.
const DefaultDiskSize = 8 << 30

// Request says what to build. Empty fields take the defaults.
type Request struct {
	// Role is master or worker (required).
	Role node.Role
	// NodeBinary is the node program (bin/kiln-node), /init of the root
	// image.
	NodeBinary string
	// InitBinary is stage 1 (bin/kiln-init), /init of the initramfs.
	// Default: kiln-init beside NodeBinary.
	InitBinary string
	// ClusterDir is the cluster directory (kiln gen cluster). A master
	// image gets all of it; a worker image only cluster.yaml, the cluster
	// CA certificate and the bootstrap token.
	ClusterDir string
	// ConfigFile is the node config embedded as /etc/kiln/config.yaml.
	// Default: a minimal config naming the role. Its role must be Role.
	ConfigFile string
	// OutDir receives the images. Default out/<role>.
	OutDir string
	// Kernel is the Debian kernel flavour. Default kernel.Cloud.
	Kernel kernel.Flavour
	// Formats are the output formats to build (names from FormatNames).
	// Default: all of them.
	Formats []string
	// CacheDir holds the downloaded kernel. Default kernel.DefaultCacheDir().
	CacheDir string
	// RootCacheDir keeps the last root images built, for builds of the
	// same contents (any cluster). Default: CacheDir/rootimages.
	RootCacheDir string
	// Progress receives one line per build step with its duration and
	// the sizes it wrote. nil: no output.
	Progress io.Writer
	// Append adds kernel command line arguments to DefaultCmdline.
	Append []string
	// DiskSize is the qcow2 disk's virtual size in bytes. Default
	// DefaultDiskSize.
	DiskSize int64
	// Version is kiln's version, written to /etc/os-release. Default "dev".
	Version string
	// KubernetesVersion is the Kubernetes release the node binary links
	// (v1.37.2), recorded in the manifest for kiln upgrade's version-skew
	// checks; "" when unknown.
	KubernetesVersion string
	// BinDir holds the worker stack's programs (runc, the shim, cni/*,
	// oci/*), as "make build" lays them out. Default: NodeBinary's
	// directory. Used when the node runs pods.
	BinDir string
	// Images are image archives (docker save) to import at boot besides
	// kiln's own, for a node that runs pods.
	Images []string
	// BootstrapToken, if set, is the token a worker image joins with
	// instead of the cluster directory's (kiln gen token: one per batch
	// of machines, with an expiry).
	BootstrapToken string
}

// Artifact is a file a format wrote.
type Artifact struct {
	Format string `json:"format"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
}

// Step is one timed step of a build.
type Step struct {
	Name     string
	Duration time.Duration
}

// Result describes a finished build.
type Result struct {
	Role   node.Role
	OutDir string
	// ID identifies the image: a hash of the kernel and the initramfs.
	ID string
	// Release is the version string in the image's os-release
	// (Request.Version): what a node running it reports.
	Release string
	// ClusterCAHash is the cluster CA's pki.CAHash: an image is for one
	// cluster (kiln upgrade refuses another's).
	ClusterCAHash string
	// KubernetesVersion is Request.KubernetesVersion.
	KubernetesVersion string
	// Kernel is the kernel the image boots.
	Kernel *kernel.Kernel
	// Vmlinuz and Initramfs are the boot files in OutDir.
	Vmlinuz, Initramfs string
	// InitramfsRaw and InitramfsSize are the uncompressed and the file
	// sizes of the initramfs (equal: its bulk, the root image, is
	// compressed already).
	InitramfsRaw, InitramfsSize int64
	// RootFiles, RootRaw and RootSize describe the root image: its
	// regular files, their bytes, and the squashfs' bytes.
	RootFiles         int
	RootRaw, RootSize int64
	// EarlyModules are the modules stage 1 loads to mount the root.
	EarlyModules []string
	// Cmdline is the kernel command line the formats use (each adds
	// kiln.boot=<how it booted>).
	Cmdline []string
	// Modules are the kernel modules in the initramfs, in load order.
	Modules []string
	// Tools are the userspace tools in the initramfs (image paths), and
	// MissingTools the optional ones the build host does not have.
	Tools, MissingTools []string
	// PodImages are the references of the images the node imports at
	// boot (empty when it runs no pods).
	PodImages []string
	// Entries is the number of entries in the initramfs.
	Entries   int
	Artifacts []Artifact
	Steps     []Step
}

// Check validates the request without building anything and without
// reading the cluster directory: role, node binary, config file, formats,
// kernel flavour. Build calls it first; "kiln build" calls it before it
// generates a default cluster directory, so that a mistyped flag writes
// nothing.
func (r *Request) Check() error {
	if r.Role == "" {
		return errors.New("no role given (want master or worker)")
	}
	if _, err := node.ParseRole(string(r.Role)); err != nil {
		return fmt.Errorf("role %w", err)
	}
	if r.NodeBinary == "" {
		return errors.New("no node binary given")
	}
	if err := checkBinary("node binary", r.NodeBinary, "bin/kiln-node", "--node-binary"); err != nil {
		return err
	}
	if err := checkBinary("stage 1 binary", r.initBinary(), "bin/kiln-init", "--init-binary"); err != nil {
		return err
	}
	if r.ConfigFile != "" {
		if _, err := r.nodeConfig(); err != nil {
			return err
		}
	}
	if _, err := lookupFormats(r.Formats); err != nil {
		return err
	}
	if _, err := kernel.ParseFlavour(string(r.Kernel)); err != nil {
		return err
	}
	if r.DiskSize < 0 {
		return fmt.Errorf("disk size %d is negative", r.DiskSize)
	}
	if r.BootstrapToken != "" {
		if r.Role == node.RoleMaster {
			return errors.New("a bootstrap token is for worker images: a master applies its cluster directory's own token (create others with kiln gen token)")
		}
		if err := cluster.ValidateBootstrapToken(r.BootstrapToken); err != nil {
			return fmt.Errorf("bootstrap token: %w", err)
		}
	}
	return nil
}

// checkBinary checks that p is an executable Linux ELF file; what, target
// and flag name it in the error.
func checkBinary(what, p, target, flag string) error {
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s %s does not exist (build it with \"make %s\", or name another with %s)", what, p, target, flag)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s %s is not a regular file", what, p)
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != "\x7fELF" {
		return fmt.Errorf("%s %s is not an ELF executable", what, p)
	}
	return nil
}

// initBinary is InitBinary or its default, kiln-init beside the node
// binary.
func (r *Request) initBinary() string {
	if r.InitBinary != "" {
		return r.InitBinary
	}
	return filepath.Join(filepath.Dir(r.NodeBinary), "kiln-init")
}

// nodeConfig returns the node config to embed: the config file's bytes
// (validated, role checked), or a minimal generated one.
func (r *Request) nodeConfig() ([]byte, error) {
	if r.ConfigFile == "" {
		data := []byte(fmt.Sprintf("# Generated by kiln build (no --config given).\napiVersion: %s\nkind: %s\nrole: %s\n",
			node.APIVersion, node.Kind, r.Role))
		if _, err := node.Parse(data); err != nil {
			return nil, fmt.Errorf("generated node config: %w", err)
		}
		return data, nil
	}
	cfg, err := node.Load(r.ConfigFile)
	if err != nil {
		return nil, err
	}
	if cfg.Role != r.Role {
		return nil, fmt.Errorf("config %s: role is %s, but the image is for a %s (set \"role: %s\" in the file, or build the other role)",
			r.ConfigFile, cfg.Role, r.Role, r.Role)
	}
	return os.ReadFile(r.ConfigFile)
}

// withDefaults returns the request with its defaults filled in.
func (r Request) withDefaults() Request {
	if r.OutDir == "" {
		r.OutDir = filepath.Join("out", string(r.Role))
	}
	if r.Kernel == "" {
		r.Kernel = kernel.Cloud
	}
	if f, err := kernel.ParseFlavour(string(r.Kernel)); err == nil {
		r.Kernel = f
	}
	if len(r.Formats) == 0 {
		r.Formats = FormatNames()
	}
	if r.CacheDir == "" {
		r.CacheDir = kernel.DefaultCacheDir()
	}
	if r.RootCacheDir == "" {
		r.RootCacheDir = filepath.Join(r.CacheDir, "rootimages")
	}
	if r.DiskSize == 0 {
		r.DiskSize = DefaultDiskSize
	}
	if r.Version == "" {
		r.Version = "dev"
	}
	return r
}

// progress prints the build steps and records their durations.
type progress struct {
	w     io.Writer
	steps []Step
}

// step runs f as a named step and prints its duration and the details it
// returns.
func (p *progress) step(name string, f func() (string, error)) error {
	start := time.Now()
	details, err := f()
	d := time.Since(start)
	p.steps = append(p.steps, Step{Name: name, Duration: d})
	if p.w != nil {
		status := details
		if err != nil {
			status = "FAILED"
		}
		fmt.Fprintf(p.w, "kiln build: %-9s %6.1fs  %s\n", name, d.Seconds(), status)
	}
	return err
}

func (p *progress) printf(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, "kiln build: "+format+"\n", args...)
	}
}

// Build builds the image the request describes. It checks everything it
// can (request, host tools the formats need, cluster directory) before the
// long steps.
func Build(ctx context.Context, req Request) (*Result, error) {
	if err := req.Check(); err != nil {
		return nil, err
	}
	r := req.withDefaults()
	formats, err := lookupFormats(r.Formats)
	if err != nil {
		return nil, err
	}
	if err := checkHostTools(formats); err != nil {
		return nil, err
	}
	config, err := r.nodeConfig()
	if err != nil {
		return nil, err
	}
	if r.ClusterDir == "" {
		return nil, errors.New("no cluster directory given")
	}
	// Load checks the material (and LoadForWorker that a worker needs no
	// more than it gets).
	var cl *cluster.Cluster
	if r.Role == node.RoleMaster {
		cl, err = cluster.Load(r.ClusterDir)
	} else {
		cl, err = cluster.LoadForWorker(r.ClusterDir)
	}
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(r.OutDir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(r.OutDir, ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	p := &progress{w: r.Progress}
	res := &Result{Role: r.Role, OutDir: r.OutDir, Release: r.Version, ClusterCAHash: cl.CAHash, KubernetesVersion: r.KubernetesVersion}
	total := time.Now()

	if err := p.step("fetch", func() (string, error) {
		k, err := kernel.Fetch(ctx, kernel.Options{CacheDir: r.CacheDir, Flavour: r.Kernel, Progress: r.Progress})
		if err != nil {
			return "", err
		}
		res.Kernel = k
		return fmt.Sprintf("%s (Debian %s) from %s", k.Release, k.DebVersion, r.CacheDir), nil
	}); err != nil {
		return nil, err
	}

	var a *initramfs.Archive
	if err := p.step("content", func() (string, error) {
		var c *content
		a, c, err = assemble(res.Kernel, r, config)
		if err != nil {
			return "", err
		}
		res.Modules, res.Tools, res.MissingTools = c.modules, c.tools, c.missingTools
		res.PodImages = c.podImages
		res.Entries = len(a.Paths())
		pods := "no pods"
		if len(c.podImages) > 0 {
			pods = "images " + strings.Join(c.podImages, " ")
		}
		return fmt.Sprintf("%d entries: /init, %d modules, tools %s; %s", res.Entries, len(c.modules), strings.Join(c.tools, " "), pods), nil
	}); err != nil {
		return nil, err
	}
	for _, m := range res.MissingTools {
		p.printf("warning: optional tool %s is not on this host, the image will lack it", m)
	}
	p.printf("%s", secretsNote(r.Role))

	if err := checkKernel(res.Kernel); err != nil {
		return nil, err
	}
	var root *rootImage
	// The node's config and cluster material go beside the root image,
	// not in it (image.EtcDir): the image is then the same for every
	// cluster, and the cache has it.
	nodeEtc := a.Extract(image.NodeEtcFiles()...)
	if err := p.step("root", func() (string, error) {
		var cached bool
		root, cached, err = cachedRootImage(ctx, a, tmp, r.RootCacheDir)
		if err != nil {
			return "", err
		}
		res.RootFiles, res.RootRaw, res.RootSize = root.Files, root.Raw, root.Size
		how := "made with mksquashfs " + strings.Join(squashfsArgs, " ")
		if cached {
			how = "from the cache, " + filepath.Dir(root.path)
		}
		return fmt.Sprintf("root image: %d files, %s → %s squashfs (%s)", root.Files, mb(root.Raw), mb(root.Size), how), nil
	}); err != nil {
		return nil, err
	}

	res.Vmlinuz = filepath.Join(r.OutDir, image.KernelFile)
	res.Initramfs = filepath.Join(r.OutDir, image.InitramfsFile)
	if err := p.step("initramfs", func() (string, error) {
		outer, early, err := stage1Archive(res.Kernel, r.initBinary(), root, nodeEtc)
		if err != nil {
			return "", err
		}
		res.EarlyModules = early
		n, err := initramfs.WritePlainMode(res.Initramfs, outer, FileMode(r.Role))
		if err != nil {
			return "", err
		}
		res.InitramfsRaw, res.InitramfsSize = n, n
		if _, err := fsutil.CopyFile(res.Vmlinuz, res.Kernel.Vmlinuz, 0o644); err != nil {
			return "", err
		}
		if res.ID, err = imageID(res.Vmlinuz, res.Initramfs); err != nil {
			return "", err
		}
		return fmt.Sprintf("%s: %s (stage 1, modules %s, the root image); vmlinuz %s; id %s",
			res.Initramfs, mb(n), strings.Join(early, " "), mb(fileSize(res.Vmlinuz)), res.ID), nil
	}); err != nil {
		return nil, err
	}

	res.Cmdline = append(DefaultCmdline(), r.Append...)
	img := &Image{
		Role:      r.Role,
		ID:        res.ID,
		OutDir:    r.OutDir,
		Vmlinuz:   res.Vmlinuz,
		Initramfs: res.Initramfs,
		Cmdline:   res.Cmdline,
		DiskSize:  r.DiskSize,
		TmpDir:    tmp,
	}
	for _, f := range formats {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := p.step(f.Name, func() (string, error) {
			files, err := f.Build(ctx, img)
			if err != nil {
				return "", fmt.Errorf("format %s: %w", f.Name, err)
			}
			var parts []string
			for _, path := range files {
				a := Artifact{Format: f.Name, Path: path, Size: fileSize(path)}
				res.Artifacts = append(res.Artifacts, a)
				parts = append(parts, fmt.Sprintf("%s %s", path, mb(a.Size)))
			}
			return strings.Join(parts, ", "), nil
		}); err != nil {
			return nil, err
		}
	}
	res.Steps = p.steps
	if err := writeManifest(r, res); err != nil {
		return nil, err
	}
	p.printf("%s image %s in %s, done in %.1fs", r.Role, res.ID, r.OutDir, time.Since(total).Seconds())
	return res, nil
}

// DefaultCmdline is the kernel command line of every format (each adds
// kiln.boot=<kernel|iso-bios|iso-uefi|qcow2-bios|qcow2-uefi|pxe>).
//
// ttyS0 comes last on purpose: the last console= is /dev/console, which is
// PID 1's standard output, and the serial port is what "kiln run", the tests
// and a server's serial-over-LAN read. Kernel messages still go to both.
// panic=-1 reboots at once on a panic (QEMU's -no-reboot turns that into
// an exit instead of a hang).
//
// apparmor=0: the image carries no apparmor_parser, so containerd cannot
// load a profile. With the kernel's AppArmor off, the kubelet refuses a pod
// that asks for a profile at once ("Cannot enforce AppArmor: AppArmor is
// not enabled on the host") instead of admitting it and leaving its
// containers in CreateContainerError. Containers are confined by seccomp
// (seccompDefault), namespaces and cgroups.
func DefaultCmdline() []string {
	return []string{"console=tty0", "console=ttyS0,115200", "panic=-1", "apparmor=0"}
}

// imageID hashes the kernel and the initramfs.
func imageID(files ...string) (string, error) {
	h := sha256.New()
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// mb formats a size in MB (or KB when small).
func mb(n int64) string {
	if n < 1e6 {
		return fmt.Sprintf("%.1f KB", float64(n)/1e3)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

// FileMode is the permission bits of the image files that hold the
// initramfs (initramfs.img, pxe/initramfs.img, the ISO, the qcow2 disk): a
// master's holds every key of the cluster and is 0600; a worker's holds no
// key of the cluster, only its bootstrap token, and is 0644.
func FileMode(role node.Role) os.FileMode {
	if role == node.RoleMaster {
		return 0o600
	}
	return 0o644
}

// secretsNote is the build's line on what the image holds that is secret,
// and who on the build host can read it (see clusterFiles).
func secretsNote(role node.Role) string {
	if role == node.RoleMaster {
		return "master image: it holds every key of the cluster (CA, etcd CA, front-proxy CA, service-account and encryption keys, admin kubeconfig); " +
			"its initramfs, ISO, qcow2 and PXE files are mode 0600"
	}
	return "worker image: no key of the cluster; its one cluster secret is the bootstrap token (it joins machines as nodes); its files are mode 0644"
}

// placeFile gives a file the tools wrote (under their umask) the mode of
// the role's images, then renames it into place.
func placeFile(tmp, out string, role node.Role) error {
	if err := os.Chmod(tmp, FileMode(role)); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// linkOrCopy hard-links src to dst when they are on one file system, and
// copies otherwise; either way dst ends with mode perm. Both writers of src
// replace it by rename, so a link never sees a later build's bytes.
func linkOrCopy(dst, src string, perm os.FileMode) error {
	os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return os.Chmod(dst, perm)
	}
	_, err := fsutil.CopyFile(dst, src, perm)
	return err
}
