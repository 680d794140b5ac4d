package pxe

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"kiln/configs/node"
	"kiln/images/builder"
)

// Image is a built image directory (kiln build --out) served to machines
// of its role.
type Image struct {
	Dir  string
	Role node.Role
	ID   string
	// Cmdline is the image's kernel command line, without the kiln.boot=
	// and kiln.config= the server adds.
	Cmdline []string
	// Kernel and Initramfs are the files served as
	// /images/<role>/vmlinuz and /images/<role>/initramfs.img: the PXE
	// bundle's (<dir>/pxe/), else the kernel format's (<dir>/).
	Kernel, Initramfs string
}

// Files served per image, by name under /images/<role>/.
const (
	kernelFile    = "vmlinuz"
	initramfsFile = "initramfs.img"
)

// LoadImage reads an image directory: its manifest (role, ID), its command
// line (the cmdline file, else the manifest's) and its boot files.
func LoadImage(dir string) (*Image, error) {
	m, err := builder.ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	img := &Image{Dir: dir, Role: m.Role, ID: m.ID}
	if m.Role != node.RoleMaster && m.Role != node.RoleWorker {
		return nil, fmt.Errorf("%s: role %q in %s is not master or worker", dir, m.Role, builder.ManifestFile)
	}
	cmdline := m.Cmdline
	if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
		cmdline = strings.Fields(string(b))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, w := range cmdline {
		if strings.HasPrefix(w, "kiln.boot=") || strings.HasPrefix(w, "kiln.config=") {
			continue
		}
		img.Cmdline = append(img.Cmdline, w)
	}
	find := func(name string) (string, error) {
		for _, p := range []string{filepath.Join(dir, "pxe", name), filepath.Join(dir, name)} {
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				return p, nil
			}
		}
		return "", fmt.Errorf("%s has no %s (nor pxe/%s): build it with \"kiln build --role %s --format kernel,pxe --out %s\"",
			dir, name, name, m.Role, dir)
	}
	if img.Kernel, err = find(kernelFile); err != nil {
		return nil, err
	}
	if img.Initramfs, err = find(initramfsFile); err != nil {
		return nil, err
	}
	return img, nil
}

// file returns the path of a file served under /images/<role>/, or "".
// Only the boot files are served: an image directory may also hold an
// admin kubeconfig ("kiln run" writes one beside a master).
func (img *Image) file(name string) string {
	switch name {
	case kernelFile:
		return img.Kernel
	case initramfsFile:
		return img.Initramfs
	}
	return ""
}
