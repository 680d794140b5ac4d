package builder

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"kiln/configs/cluster"
	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/initramfs"
	"kiln/images/kernel"
)

// baseModules are the kernel modules every image carries, in load order.
// /etc/kiln/modules lists their closure (dependencies first, each once, as
// resolved from modules.dep), so PID 1 loads the file of each name in turn
// and needs no dependency resolution of its own. Modules built into the
// kernel are left out. A name unknown to the kernel is a build error.
var baseModules = []string{
	// virtio devices (QEMU, most clouds)
	"virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi",
	// ACPI power button and its input events: "kiln run" and QEMU's
	// system_powerdown press it; PID 1 reads KEY_POWER from the
	// "Power Button" /dev/input/event* device and shuts down.
	"button", "evdev",
	// containers
	"overlay",
	// pod network, services, kube-proxy (nftables and iptables modes)
	"br_netfilter", "nf_conntrack", "nf_conntrack_netlink", "nf_nat", "vxlan", "bridge", "veth",
	"nf_tables", "nft_ct", "nft_nat", "nft_chain_nat", "nft_masq", "nft_fib_inet", "nft_fib_ipv4",
	"nft_fib_ipv6", "nft_numgen", "nft_reject_inet", "nft_reject_ipv4", "nft_reject_ipv6", "nft_limit", "nft_compat",
	"nft_redir", "nft_hash", "nft_objref", "nft_quota", "nft_log",
	// network policies: kube-network-policies queues the first packet of
	// a connection to userspace (nft queue, nfnetlink_queue)
	"nft_queue", "nfnetlink_queue",
	"ip_tables", "iptable_filter", "iptable_nat", "iptable_mangle",
	"xt_MASQUERADE", "xt_conntrack", "xt_comment", "xt_mark", "xt_addrtype", "xt_nat", "xt_statistic",
	// the state disk (ext4 is built into the Debian kernels; its
	// dependencies too), the config drive (ISO 9660 or FAT, on a
	// CD-ROM or a disk) and the boot partition's slots (FAT). Debian's FAT
	// takes code page 437 and the IO charset "ascii" by default: without
	// nls_ascii every FAT mount fails ("IO charset ascii not found").
	"ext4", "isofs", "sr_mod", "vfat", "nls_cp437", "nls_ascii", "nls_utf8",
}

// hardwareModules are loaded when the kernel has them (the generic flavour,
// for physical servers): common disk controllers and NICs. Absent ones are
// skipped silently.
var hardwareModules = []string{
	"ahci", "sd_mod", "nvme", "megaraid_sas", "mpt3sas",
	"e1000", "e1000e", "igb", "ixgbe", "i40e", "ice", "bnxt_en", "tg3", "bnx2", "r8169", "mlx5_core", "virtio_input",
}

// Tool is a userspace program the node execs, copied from the build host
// with its shared libraries.
type Tool struct {
	// Path is where the image has it; Host lists where the build host
	// may have it, first found wins.
	Path string
	Host []string
	// Required tools fail the build when missing; others are a warning.
	Required bool
	// Package is the Debian package that has it (for the error).
	Package string
	// Why the node needs it.
	Why string
}

// CABundle is the public CAs' bundle in the image (and on the build host).
const CABundle = "etc/ssl/certs/ca-certificates.crt"

// hostTools are the programs in the image besides /init: the one list to edit.
var hostTools = []Tool{
	{Path: "/usr/sbin/mke2fs", Host: []string{"/usr/sbin/mke2fs", "/sbin/mke2fs"}, Required: true, Package: "e2fsprogs",
		Why: "formats a blank state disk"},
	{Path: "/usr/sbin/e2fsck", Host: []string{"/usr/sbin/e2fsck", "/sbin/e2fsck"}, Required: true, Package: "e2fsprogs",
		Why: "checks the state disk before it is mounted"},
	{Path: "/usr/bin/mount", Host: []string{"/usr/bin/mount", "/bin/mount"}, Required: true, Package: "mount",
		Why: "the kubelet's volume code runs mount(8)"},
	{Path: "/usr/bin/umount", Host: []string{"/usr/bin/umount", "/bin/umount"}, Required: true, Package: "mount",
		Why: "the kubelet's volume code runs umount(8)"},
	{Path: "/usr/sbin/nft", Host: []string{"/usr/sbin/nft", "/sbin/nft"}, Required: true, Package: "nftables",
		Why: "kiln's node firewall and kube-proxy's nftables mode (knftables runs nft)"},
}

// clusterFile is a file of a cluster directory copied into an image.
type clusterFile struct {
	rel  string      // relative to the cluster directory (cluster.*File)
	mode os.FileMode // in the image
}

// clusterFiles returns the cluster material a role's image carries. A
// worker gets cluster.yaml (the cluster's name, endpoint and the CA
// certificate's hash) and the bootstrap token: it learns the CA certificate
// from the master when it joins, checked against the hash. Never a CA key,
// the service-account key, the encryption key or the admin kubeconfig (it
// holds a cluster-admin private key).
func clusterFiles(role node.Role) []clusterFile {
	worker := []clusterFile{
		{cluster.ConfigFile, 0o644},
		{cluster.BootstrapTokenFile, 0o600},
	}
	if role != node.RoleMaster {
		return worker
	}
	return append(worker,
		clusterFile{cluster.CACertFile, 0o644},
		clusterFile{cluster.AdminKubeconfigFile, 0o600},
		clusterFile{cluster.CAKeyFile, 0o600},
		clusterFile{cluster.EtcdCACertFile, 0o644},
		clusterFile{cluster.EtcdCAKeyFile, 0o600},
		clusterFile{cluster.FrontProxyCACertFile, 0o644},
		clusterFile{cluster.FrontProxyCAKeyFile, 0o600},
		clusterFile{cluster.ServiceAccountKeyFile, 0o600},
		clusterFile{cluster.ServiceAccountPubFile, 0o644},
		clusterFile{cluster.EncryptionKeyFile, 0o600},
	)
}

// content is what assemble put in the archive, for the report.
type content struct {
	podImages    []string
	modules      []string
	tools        []string
	missingTools []string
}

// assemble builds the root image's tree (stage1Archive wraps it in the
// initramfs). Everything it adds is a function of
// its inputs (file contents, the request), so the archive's bytes are too.
func assemble(k *kernel.Kernel, r Request, config []byte) (*initramfs.Archive, *content, error) {
	a := initramfs.New()
	c := &content{}

	// The root file system's skeleton. Stage 1 mounts tmpfs on run, var
	// and root, and an overlay on etc; PID 1 mounts proc, sys, dev
	// (devtmpfs) and tmp. The image itself is read-only.
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "etc", "var", "var/lib", "var/log", "root", "usr/bin", "usr/sbin"} {
		mode := os.FileMode(0o755)
		switch d {
		case "tmp":
			mode = 0o777 | os.ModeSticky
		case "root":
			mode = 0o700
		case "proc":
			mode = 0o555
		}
		a.Dir(d, mode)
	}
	a.Symlink("bin", "usr/bin")
	a.Symlink("sbin", "usr/sbin")

	// /init: the node binary (with its loader and libraries should it
	// be dynamic; the real one is static).
	deps, err := initramfs.ELFDeps(r.NodeBinary)
	if err != nil {
		return nil, nil, fmt.Errorf("node binary: %w", err)
	}
	a.FileFrom("init", r.NodeBinary, 0o755)
	for _, d := range deps {
		a.FileFrom(d.Dest, d.Host, 0)
	}

	a.Dir("etc/kiln", 0o755)
	a.File(image.ConfigFile, config, 0o644)
	a.File(image.OSReleaseFile, osRelease(r), 0o644)
	// The kubelet reads the user databases (user-namespace mappings).
	a.File("etc/passwd", []byte("root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"), 0o644)
	a.File("etc/group", []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644)
	// The public CAs (Debian's ca-certificates), where Go's crypto/x509
	// looks: containerd checks public registries against them (egress),
	// as it would on any distribution. Optional: without them a
	// registry's CA goes in the node config's registries section.
	if _, err := os.Stat("/" + CABundle); err == nil {
		a.FileFrom(CABundle, "/"+CABundle, 0o644)
	} else {
		c.missingTools = append(c.missingTools, "ca-certificates.crt (package ca-certificates: the public CAs containerd checks registries with)")
	}

	// Cluster material.
	a.Dir(image.ClusterDir, 0o700)
	for _, d := range []string{cluster.PKIDir, cluster.EtcdDir, cluster.SecretsDir} {
		if r.Role == node.RoleMaster || d != cluster.EtcdDir {
			a.Dir(path.Join(image.ClusterDir, d), 0o700)
		}
	}
	for _, f := range clusterFiles(r.Role) {
		host := filepath.Join(r.ClusterDir, filepath.FromSlash(f.rel))
		if _, err := os.Stat(host); err != nil {
			return nil, nil, fmt.Errorf("cluster directory %s: %w", r.ClusterDir, err)
		}
		if f.rel == cluster.BootstrapTokenFile && r.BootstrapToken != "" {
			a.File(path.Join(image.ClusterDir, f.rel), []byte(r.BootstrapToken+"\n"), f.mode)
			continue
		}
		a.FileFrom(path.Join(image.ClusterDir, f.rel), host, f.mode)
	}

	// Kernel modules.
	mods, err := moduleFiles(k)
	if err != nil {
		return nil, nil, err
	}
	modDir := path.Join("lib/modules", k.Release)
	for _, rel := range mods {
		a.FileFrom(path.Join(modDir, rel), filepath.Join(k.ModulesDir, filepath.FromSlash(rel)), 0o644)
		c.modules = append(c.modules, kernel.ModuleName(rel))
	}
	index, err := k.ModuleIndexFiles()
	if err != nil {
		return nil, nil, err
	}
	for _, f := range index {
		a.FileFrom(path.Join(modDir, f), filepath.Join(k.ModulesDir, f), 0o644)
	}
	a.File(image.ModulesFile, lines(c.modules), 0o644)

	// Userspace tools.
	for _, t := range hostTools {
		host := firstExisting(t.Host)
		if host == "" {
			if t.Required {
				return nil, nil, fmt.Errorf("%s is not on this host (%s); the node needs it: %s. Install package %s (scripts/install-deps.sh)",
					path.Base(t.Path), strings.Join(t.Host, ", "), t.Why, t.Package)
			}
			c.missingTools = append(c.missingTools, fmt.Sprintf("%s (package %s: %s)", path.Base(t.Path), t.Package, t.Why))
			continue
		}
		if err := a.AddHostBinary(host, t.Path); err != nil {
			return nil, nil, fmt.Errorf("tool %s: %w", t.Path, err)
		}
		c.tools = append(c.tools, t.Path)
	}
	a.File(image.ToolsFile, lines(c.tools), 0o644)

	// The worker stack, when the node runs pods.
	cfg, err := node.Parse(config)
	if err != nil {
		return nil, nil, fmt.Errorf("node config: %w", err)
	}
	if cfg.RunsPods() {
		if c.podImages, err = podContent(a, r); err != nil {
			return nil, nil, err
		}
	} else if len(r.Images) > 0 {
		return nil, nil, errors.New("image archives given, but this node runs no pods (runPods: false)")
	}
	return a, c, nil
}

// osRelease is /etc/os-release.
func osRelease(r Request) []byte {
	role := string(r.Role)
	return []byte(fmt.Sprintf(`NAME="kiln"
ID=kiln
VERSION_ID=%q
PRETTY_NAME="kiln %s (%s)"
VARIANT="%s"
VARIANT_ID=%s
`, r.Version, r.Version, role, strings.ToUpper(role[:1])+role[1:], role))
}

func lines(ss []string) []byte {
	if len(ss) == 0 {
		return nil
	}
	return []byte(strings.Join(ss, "\n") + "\n")
}

func firstExisting(paths []string) string {
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}
