// Package image is the contract between the three programs that meet in a
// kiln image: the builder that writes it (images/builder, in the host CLI),
// PID 1 that boots from it (init/boot, in kiln-node) and the host tools
// that read an image directory (kiln run, kiln cluster, kiln pxe serve).
//
// Every name they must agree on is spelled here once: the paths inside the
// image, the kernel command-line keys, the disk and drive labels, the
// completeness marker, the memory the image needs, and the files of an
// image directory (the builder's Open resolves them through the image's
// manifest). It is a leaf: it imports only the standard library, so both
// binaries, and every package of either, may link it.
package image

import "fmt"

// An image boots in two stages. The initramfs holds only stage 1
// (cmd/kiln-init as /init), the modules that mount the root, and the root
// image: a compressed read-only squashfs of everything else, kiln-node
// included, which stage 1 mounts and then executes NodeInit from.

// Paths in the initramfs (stage 1's world).
const (
	// RootImageFile is the root file system image (squashfs).
	RootImageFile = "/kiln/root.squashfs"
	// RootImageSumFile holds the root image's CRC-32 (IEEE) and size,
	// "%08x %d\n", checked by stage 1 before mounting. A CRC, not a
	// cryptographic hash: it guards against a damaged copy (who can change
	// the initramfs can change this file too), and under TCG it checks the
	// ~80 MB image in a tenth of sha256's 4 s.
	RootImageSumFile = "/kiln/root.crc32"
	// EarlyModulesFile lists the modules stage 1 loads to mount the root
	// (loop, squashfs, overlay and their dependencies), in ModulesFile's
	// format.
	EarlyModulesFile = "/kiln/modules"
	// EtcDir holds the files of the root's /etc that belong to this node
	// and cluster rather than to the image (the node config, the cluster
	// material: NodeEtcFiles), under their paths below /etc. They stay out
	// of the root image, so that it is the same for every cluster and a
	// build can take it from the cache; stage 1 copies them into /etc's
	// overlay.
	EtcDir = "/kiln/etc"
	// SysRoot is where stage 1 mounts the root image before moving it to /.
	SysRoot = "/sysroot"
	// CompleteMarker is an empty file at the root that every initramfs
	// ends with, after all other entries. The kernel unpacks an archive
	// in order, so when it runs out of memory part way it boots on with
	// the tail missing: stage 1 checks for this file first and reports too
	// little memory instead of failing later at random.
	CompleteMarker = ".kiln-initramfs-complete"
)

// Paths in the root image (the node's root file system).
const (
	// NodeInit is kiln-node, the node's PID 1, which stage 1 executes.
	NodeInit = "/init"
	// ConfigFile is the node config baked into the image.
	ConfigFile = "/etc/kiln/config.yaml"
	// ClusterDir holds the cluster material the role needs, in a cluster
	// directory's layout (configs/cluster.PathsFor).
	ClusterDir = "/etc/kiln/cluster"
	// ModulesFile lists the kernel modules PID 1 loads, one a line, in load
	// order (dependencies first: the builder writes the closure), each
	// optionally followed by module parameters; '#' starts a comment.
	ModulesFile = "/etc/kiln/modules"
	// ToolsFile lists the userspace tools present, one path a line.
	ToolsFile = "/etc/kiln/tools"
	// OSReleaseFile names the image for humans and tools.
	OSReleaseFile = "/etc/os-release"
)

// NodeEtcFiles are the paths of the root that the initramfs carries in
// EtcDir instead of the root image.
func NodeEtcFiles() []string { return []string{ConfigFile, ClusterDir} }

// Paths of the worker stack's programs and data inside the image: the
// builder puts them there, the components run them.
const (
	// RuncPath is the OCI runtime containerd's runc shim runs.
	RuncPath = "/usr/bin/runc"
	// ShimPath is containerd's runc shim (containerd finds it in $PATH).
	ShimPath = "/usr/bin/containerd-shim-runc-v2"
	// CNIBinDir holds the upstream CNI plugins (bridge, host-local, loopback).
	CNIBinDir = "/usr/libexec/cni"
	// ImagesDir holds the OCI image archives imported at boot: the
	// sandbox, CoreDNS and test images kiln builds, and the user's own.
	ImagesDir = "/usr/share/kiln/images"
)

// Kernel command-line keys. The builder and kiln pxe serve write them;
// PID 1 reads them (init/boot), later ones overriding earlier ones.
const (
	// ParamConfig is a node config to stack over the embedded one: a path
	// in the image, or an http:// or https:// URL fetched once the network
	// is up.
	ParamConfig = "kiln.config"
	// ParamRole overrides the config's role (master or worker).
	ParamRole = "kiln.role"
	// ParamHostname overrides the config's hostname.
	ParamHostname = "kiln.hostname"
	// ParamStateDisk overrides the config's storage.stateDisk (a qcow2
	// image names its own state partition with it: StateDiskByLabel).
	ParamStateDisk = "kiln.statedisk"
	// ParamVerbose puts every component's output on the console as well as
	// in its log file.
	ParamVerbose = "kiln.verbose"
	// ParamBoot tells how the node was booted (one of the Boot*
	// values): the builder's boot entries and kiln pxe serve set it, PID 1
	// reports it.
	ParamBoot = "kiln.boot"
)

// Boot methods, the values of ParamBoot.
const (
	BootKernel    = "kernel" // qemu -kernel/-initrd, kexec
	BootISOBIOS   = "iso-bios"
	BootISOUEFI   = "iso-uefi"
	BootQcow2BIOS = "qcow2-bios"
	BootQcow2UEFI = "qcow2-uefi"
	BootPXE       = "pxe"
)

// Disk and drive labels.
const (
	// StateLabel is the ext4 label of a node's state partition: PID 1
	// labels a disk it formats with it, and a qcow2 image's second
	// partition carries it.
	StateLabel = "kiln-state"
	// ConfigDriveLabel is the file system label of a config drive (FAT,
	// ISO 9660 or ext4) that holds ConfigDriveFile.
	ConfigDriveLabel = "KILN-CONFIG"
	// ConfigDriveFile is the node config's name on a config drive.
	ConfigDriveFile = "config.yaml"
)

// StateDiskByLabel is the storage.stateDisk value (and ParamStateDisk
// value) that names the partition labelled StateLabel.
const StateDiskByLabel = "LABEL=" + StateLabel

// Arg renders one kernel command-line parameter, key=value.
func Arg(key, value string) string { return key + "=" + value }

// SuggestedMemoryMiB is the guest memory an image whose initramfs unpacks
// to rawInitramfs bytes should get at least: the kernel unpacks the
// archive into RAM while it still holds the compressed copy (about twice
// the raw size), plus 192 MiB for the kernel and PID 1. Less may work; too
// little ends in "Initramfs unpacking failed" (see CompleteMarker).
func SuggestedMemoryMiB(rawInitramfs int64) int { return int(2*rawInitramfs>>20) + 192 }

// MemoryAdvice is the sentence PID 1 and the host tools print when an
// image did not fit the machine's memory.
func MemoryAdvice() string {
	return fmt.Sprintf("give it at least twice the initramfs' raw size (%s: initramfsRawBytes) plus 192 MiB", ManifestFile)
}

// The files of an image directory (what "kiln build --out DIR" writes),
// relative to it. The builder writes them under these names and records
// each in the image's manifest; readers resolve them with builder.Open.
const (
	// ManifestFile describes the image (builder.Manifest).
	ManifestFile = "image.json"
	// KernelFile, InitramfsFile and CmdlineFile are the kernel format: the
	// boot files for direct boot (qemu -kernel, kexec) and the command
	// line they boot with.
	KernelFile    = "vmlinuz"
	InitramfsFile = "initramfs.img"
	CmdlineFile   = "cmdline"
	// PXEDir holds the pxe format: KernelFile, InitramfsFile and
	// PXEScript, which names them relative to its own URL.
	PXEDir    = "pxe"
	PXEScript = "boot.ipxe"
)

// ISOFile is the iso format's file for a role ("master.iso").
func ISOFile(role string) string { return role + ".iso" }

// Qcow2File is the qcow2 format's file for a role ("worker.qcow2").
func Qcow2File(role string) string { return role + ".qcow2" }
