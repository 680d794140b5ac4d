package builder

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"kiln/configs/image"
	"kiln/configs/node"
)

// Manifest describes a built image directory, for the host tools and for
// humans. It has no time stamp: the same build writes the same manifest.
type Manifest struct {
	ID   string    `json:"id"`
	Role node.Role `json:"role"`
	// Release is the version string the image's nodes report (kiln
	// build --release; os-release's VERSION_ID).
	Release string `json:"release,omitempty"`
	// ClusterCAHash is the cluster CA's hash (sha256:...): the cluster the
	// image belongs to, which kiln upgrade checks against the node's.
	ClusterCAHash string `json:"clusterCAHash,omitempty"`
	// KubernetesVersion is the Kubernetes release the image runs
	// (v1.37.2; kiln upgrade checks Kubernetes' version-skew rules).
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`
	ClusterDir        string `json:"clusterDir"` // absolute
	KernelRelease     string `json:"kernelRelease"`
	KernelPackage     string `json:"kernelPackage"`
	KernelVersion     string `json:"kernelVersion"` // Debian package version
	// Cmdline is the kernel command line every format starts from (each
	// adds ParamBoot).
	Cmdline []string `json:"cmdline"`
	// InitramfsRaw is the uncompressed size: the guest needs about twice
	// that in RAM to unpack it (SuggestedMemoryMiB).
	InitramfsRaw int64      `json:"initramfsRawBytes"`
	Modules      []string   `json:"modules"`
	Tools        []string   `json:"tools"`
	Artifacts    []Artifact `json:"artifacts"`
}

// SuggestedMemoryMiB is the guest memory this image should get at least.
func (m Manifest) SuggestedMemoryMiB() int { return image.SuggestedMemoryMiB(m.InitramfsRaw) }

// Write writes m as dir's manifest.
func (m Manifest) Write(dir string) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, image.ManifestFile), append(data, '\n'), 0o644)
}

// Dir is an image directory opened through its manifest.
type Dir struct {
	Path string
	Manifest
}

// Open reads the manifest of the image directory dir and checks its role.
func Open(dir string) (*Dir, error) {
	p := filepath.Join(dir, image.ManifestFile)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a kiln image directory (no %s; build one with \"kiln build\")", dir, image.ManifestFile)
	}
	if err != nil {
		return nil, err
	}
	d := &Dir{Path: dir}
	if err := json.Unmarshal(data, &d.Manifest); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if _, err := node.ParseRole(string(d.Role)); err != nil {
		return nil, fmt.Errorf("%s: role: %w", p, err)
	}
	return d, nil
}

// file resolves one artifact of a format: it must be in the manifest and
// on disk. The error says which format to build.
func (d *Dir) file(format, rel string) (string, error) {
	found := false
	for _, a := range d.Artifacts {
		found = found || (a.Format == format && path.Clean(a.Path) == rel)
	}
	p := filepath.Join(d.Path, filepath.FromSlash(rel))
	if !found {
		return "", fmt.Errorf("%s has no %s (its manifest lists no %s format: rebuild with \"kiln build --format %s\")", d.Path, rel, format, format)
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("image %s: %w (rebuild it with \"kiln build\")", d.Path, err)
	}
	return p, nil
}

// Kernel are the kernel format's files: boot files and command line.
type Kernel struct {
	Vmlinuz, Initramfs string
	// Cmdline is the command line the kernel format boots with (the
	// manifest's plus kiln.boot=kernel), read from image.CmdlineFile.
	Cmdline string
}

// Kernel resolves the kernel format.
func (d *Dir) Kernel() (Kernel, error) {
	var k Kernel
	var err error
	if k.Vmlinuz, err = d.file("kernel", image.KernelFile); err != nil {
		return k, err
	}
	if k.Initramfs, err = d.file("kernel", image.InitramfsFile); err != nil {
		return k, err
	}
	cmdline, err := d.file("kernel", image.CmdlineFile)
	if err != nil {
		return k, err
	}
	b, err := os.ReadFile(cmdline)
	if err != nil {
		return k, err
	}
	k.Cmdline = strings.TrimSpace(string(b))
	return k, nil
}

// ISO resolves the iso format's file.
func (d *Dir) ISO() (string, error) { return d.file("iso", image.ISOFile(string(d.Role))) }

// Qcow2 resolves the qcow2 format's file.
func (d *Dir) Qcow2() (string, error) { return d.file("qcow2", image.Qcow2File(string(d.Role))) }

// PXE are the pxe format's files.
type PXE struct {
	Dir                string // the directory to serve (TFTP root or HTTP)
	Vmlinuz, Initramfs string
	Script             string // the iPXE script, image.PXEScript in Dir
}

// PXE resolves the pxe format.
func (d *Dir) PXE() (PXE, error) {
	var x PXE
	var err error
	if x.Vmlinuz, err = d.file("pxe", path.Join(image.PXEDir, image.KernelFile)); err != nil {
		return x, err
	}
	if x.Initramfs, err = d.file("pxe", path.Join(image.PXEDir, image.InitramfsFile)); err != nil {
		return x, err
	}
	if x.Script, err = d.file("pxe", path.Join(image.PXEDir, image.PXEScript)); err != nil {
		return x, err
	}
	x.Dir = filepath.Join(d.Path, image.PXEDir)
	return x, nil
}

func writeManifest(r Request, res *Result) error {
	clusterDir, err := filepath.Abs(r.ClusterDir)
	if err != nil {
		return err
	}
	m := Manifest{
		ID:                res.ID,
		Role:              res.Role,
		Release:           res.Release,
		ClusterCAHash:     res.ClusterCAHash,
		KubernetesVersion: res.KubernetesVersion,
		ClusterDir:        clusterDir,
		KernelRelease:     res.Kernel.Release,
		KernelPackage:     res.Kernel.Package,
		KernelVersion:     res.Kernel.DebVersion,
		Cmdline:           res.Cmdline,
		InitramfsRaw:      res.InitramfsRaw,
		Modules:           res.Modules,
		Tools:             res.Tools,
	}
	for _, a := range res.Artifacts {
		if rel, err := filepath.Rel(r.OutDir, a.Path); err == nil {
			a.Path = filepath.ToSlash(rel)
		}
		m.Artifacts = append(m.Artifacts, a)
	}
	return m.Write(r.OutDir)
}
