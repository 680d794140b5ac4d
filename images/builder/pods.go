package builder

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"kiln/configs/image"
	"kiln/images/initramfs"
	"kiln/images/oci"
)

// PodProgram is a program of the worker stack that kiln builds (make build)
// and copies into every image whose node runs pods.
type PodProgram struct {
	Bin  string // relative to the bin directory
	Path string // in the image
	Make string // the make target that builds it
}

// podPrograms are the worker stack's programs besides the node binary.
var podPrograms = []PodProgram{
	{"runc", image.RuncPath, "bin/runc"},
	{"containerd-shim-runc-v2", image.ShimPath, "bin/containerd-shim-runc-v2"},
	{"cni/bridge", image.CNIBinDir + "/bridge", "bin/cni/bridge"},
	{"cni/host-local", image.CNIBinDir + "/host-local", "bin/cni/host-local"},
	{"cni/loopback", image.CNIBinDir + "/loopback", "bin/cni/loopback"},
}

// podContent adds the worker stack to the archive: runc, containerd's shim,
// the CNI plugins, and the image archives imported at boot (kiln's own,
// built here from bin/oci/*, and the user's). It returns the image
// references, for the report.
func podContent(a *initramfs.Archive, r Request) ([]string, error) {
	binDir := r.BinDir
	if binDir == "" {
		binDir = filepath.Dir(r.NodeBinary)
	}
	missing := func(p, target string) error {
		return fmt.Errorf("%s not found: the node runs pods and needs it (build it with \"make %s\", or \"make build\")", p, target)
	}
	for _, p := range podPrograms {
		host := filepath.Join(binDir, filepath.FromSlash(p.Bin))
		if _, err := os.Stat(host); errors.Is(err, fs.ErrNotExist) {
			return nil, missing(host, p.Make)
		}
		a.Dir(path.Dir(p.Path[1:]), 0o755)
		a.FileFrom(p.Path[1:], host, 0o755)
	}
	imgDir := image.ImagesDir[1:]
	a.Dir(imgDir, 0o755)
	var refs []string
	for _, im := range oci.Builtin() {
		host := filepath.Join(binDir, "oci", im.Binary)
		if _, err := os.Stat(host); errors.Is(err, fs.ErrNotExist) {
			return nil, missing(host, "bin/oci/"+im.Binary)
		}
		var buf bytes.Buffer
		if err := im.Write(host, &buf); err != nil {
			return nil, err
		}
		a.File(path.Join(imgDir, im.Archive), buf.Bytes(), 0o644)
		refs = append(refs, im.Ref)
	}
	seen := map[string]string{}
	for _, im := range oci.Builtin() {
		seen[im.Archive] = "kiln's " + im.Ref
	}
	for _, archive := range r.Images {
		got, err := oci.Inspect(archive)
		if err != nil {
			return nil, err
		}
		base := "user-" + filepath.Base(archive)
		if other, dup := seen[base]; dup {
			return nil, fmt.Errorf("image archive %s: the name %s is already taken by %s (rename the file)", archive, filepath.Base(archive), other)
		}
		seen[base] = archive
		a.FileFrom(path.Join(imgDir, base), archive, 0o644)
		refs = append(refs, got...)
	}
	return refs, nil
}
