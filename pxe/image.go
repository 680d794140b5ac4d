package pxe

import (
	"fmt"
	"strings"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/builder"
)

// Image is a built image directory (kiln build --out) served to machines
// of its role.
type Image struct {
	Dir  string
	Role node.Role
	ID   string
	// Cmdline is the image's kernel command line, without the
	// image.ParamBoot and image.ParamConfig the server adds.
	Cmdline []string
	// Kernel and Initramfs are the files served as
	// /images/<role>/vmlinuz and /images/<role>/initramfs.img: the PXE
	// bundle's (<dir>/pxe/), else the kernel format's (<dir>/).
	Kernel, Initramfs string
}

// Files served per image, by name under /images/<role>/: the names they
// have in an image directory.
const (
	kernelFile    = image.KernelFile
	initramfsFile = image.InitramfsFile
)

// LoadImage reads an image directory through its manifest: role, ID, the
// command line (the kernel format's, else the manifest's) and the boot
// files (the pxe format's, else the kernel format's).
func LoadImage(dir string) (*Image, error) {
	d, err := builder.Open(dir)
	if err != nil {
		return nil, err
	}
	img := &Image{Dir: dir, Role: d.Role, ID: d.ID}
	cmdline := d.Cmdline
	k, kerr := d.Kernel()
	if kerr == nil {
		cmdline = strings.Fields(k.Cmdline)
	}
	for _, w := range cmdline {
		if strings.HasPrefix(w, image.ParamBoot+"=") || strings.HasPrefix(w, image.ParamConfig+"=") {
			continue
		}
		img.Cmdline = append(img.Cmdline, w)
	}
	if x, err := d.PXE(); err == nil {
		img.Kernel, img.Initramfs = x.Vmlinuz, x.Initramfs
	} else if kerr == nil {
		img.Kernel, img.Initramfs = k.Vmlinuz, k.Initramfs
	} else {
		return nil, fmt.Errorf("%s has neither the pxe nor the kernel format: build it with \"kiln build --role %s --format kernel,pxe --out %s\"", dir, d.Role, dir)
	}
	return img, nil
}

// AllowMasterImageFlag is the flag of "kiln pxe serve" that lets it serve
// a master image.
const AllowMasterImageFlag = "--allow-master-image"

// CheckMasterImage refuses a master image among images unless allow is
// set: a master image holds every key of the cluster, so whoever fetches
// it can act as the cluster's CA, its etcd, and its administrator.
func CheckMasterImage(images []*Image, allow bool) error {
	for _, img := range images {
		if img.Role == node.RoleMaster && !allow {
			return fmt.Errorf("%s is a master image: it holds every key of the cluster (CA, etcd CA, front-proxy CA, service-account and encryption keys, "+
				"an admin kubeconfig), and whoever downloads it owns the cluster. Serve it only on a provisioning network you trust, with %s "+
				"(it then goes only to machines the machines file lists as masters), or boot the master from its own disk (ISO or qcow2)",
				img.Dir, AllowMasterImageFlag)
		}
	}
	return nil
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
