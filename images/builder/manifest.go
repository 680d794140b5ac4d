package builder

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"kiln/configs/node"
)

// ManifestFile is the manifest Build writes into the output directory.
const ManifestFile = "image.json"

// Manifest describes a built image directory, for "kiln run" and humans.
// It has no time stamp: the same build writes the same manifest.
type Manifest struct {
	ID            string    `json:"id"`
	Role          node.Role `json:"role"`
	ClusterDir    string    `json:"clusterDir"` // absolute
	KernelRelease string    `json:"kernelRelease"`
	KernelPackage string    `json:"kernelPackage"`
	KernelVersion string    `json:"kernelVersion"` // Debian package version
	Cmdline       []string  `json:"cmdline"`
	// InitramfsRaw is the uncompressed size: the guest needs about twice
	// that in RAM to unpack it.
	InitramfsRaw int64    `json:"initramfsRawBytes"`
	Modules      []string `json:"modules"`
	Tools        []string `json:"tools"`
	// Artifacts are relative to the image directory.
	Artifacts []Artifact `json:"artifacts"`
}

// SuggestedMemoryMiB is the guest memory the image should get at least:
// the kernel unpacks the initramfs into RAM while it still holds the
// compressed copy (about twice the raw size), plus the kernel's own. Less
// may work; too little ends in "Initramfs unpacking failed".
func (m Manifest) SuggestedMemoryMiB() int { return int(2*m.InitramfsRaw>>20) + 192 }

func writeManifest(r Request, res *Result) error {
	clusterDir, err := filepath.Abs(r.ClusterDir)
	if err != nil {
		return err
	}
	m := Manifest{
		ID:            res.ID,
		Role:          res.Role,
		ClusterDir:    clusterDir,
		KernelRelease: res.Kernel.Release,
		KernelPackage: res.Kernel.Package,
		KernelVersion: res.Kernel.DebVersion,
		Cmdline:       res.Cmdline,
		InitramfsRaw:  res.InitramfsRaw,
		Modules:       res.Modules,
		Tools:         res.Tools,
	}
	for _, a := range res.Artifacts {
		if rel, err := filepath.Rel(r.OutDir, a.Path); err == nil {
			a.Path = filepath.ToSlash(rel)
		}
		m.Artifacts = append(m.Artifacts, a)
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(r.OutDir, ManifestFile), append(data, '\n'), 0o644)
}

// ReadManifest reads the manifest of the image directory dir.
func ReadManifest(dir string) (*Manifest, error) {
	p := filepath.Join(dir, ManifestFile)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a kiln image directory (no %s; build one with \"kiln build\")", dir, ManifestFile)
	}
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return &m, nil
}
