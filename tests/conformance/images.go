//go:build conformance

package conformance

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	imageutils "k8s.io/kubernetes/test/utils/image"

	"kiln/images/initramfs"
	"kiln/images/oci"
	"kiln/internal/testutil/registry"
)

// The images the conformance specs run, under the names upstream's e2e
// framework gives them (k8s.io/kubernetes/test/utils/image, the same
// version as e2e.test): registry.k8s.io/e2e-test-images/agnhost:2.66.1,
// …/busybox:1.37.0-2, registry.k8s.io/pause:3.10.2. None is pulled from
// the internet: each is built here, from upstream's agnhost sources,
// Debian's busybox-static and kiln's own pause.
var (
	agnhostRef     = imageutils.GetE2EImage(imageutils.Agnhost)
	agnhostPrevRef = imageutils.GetE2EImage(imageutils.AgnhostPrev)
	busyboxRef     = imageutils.GetE2EImage(imageutils.BusyBox)
	pauseRef       = imageutils.GetE2EImage(imageutils.Pause)
)

// hostBusybox is Debian's busybox-static (make deps installs it): one
// static program that is every applet it is linked as.
const hostBusybox = "/bin/busybox"

// epoch is every timestamp in the images.
var epoch = time.Unix(0, 0).UTC()

// entry is one file of an image's only layer: a directory (Dir), a
// symlink (Link), or a regular file with Data.
type entry struct {
	Path string
	Mode int64
	Dir  bool
	Link string
	Data []byte
}

// etcFiles are /etc/passwd and /etc/group with root and nobody, and more
// lines after them.
func etcFiles(passwd, group string) []entry {
	return []entry{
		{Path: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n" + passwd)},
		{Path: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnobody:x:65534:\n" + group)},
	}
}

// busyboxEntries are /bin/busybox and a symlink to it for each applet at
// the place busybox --list-full gives (bin/sh, usr/bin/wget, …), and the
// directories a shell image has.
func busyboxEntries() ([]entry, error) {
	bin, err := os.ReadFile(hostBusybox)
	if err != nil {
		return nil, fmt.Errorf("%w (busybox-static: make deps installs it)", err)
	}
	out, err := exec.Command(hostBusybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", hostBusybox, err)
	}
	es := []entry{
		{Path: "bin/busybox", Mode: 0o755, Data: bin},
		{Path: "tmp", Mode: 0o1777, Dir: true},
		{Path: "root", Mode: 0o700, Dir: true},
		{Path: "var", Mode: 0o755, Dir: true},
		{Path: "home", Mode: 0o755, Dir: true},
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "bin/busybox" {
			continue
		}
		es = append(es, entry{Path: applet, Link: "/bin/busybox"})
	}
	return es, nil
}

// hostProgram is a host ELF program at dest with its dynamic loader and
// libraries (initramfs.ELFDeps), for the tools upstream's Alpine-based
// agnhost has and busybox does not (curl).
func hostProgram(hostPath, dest string) ([]entry, error) {
	deps, err := initramfs.ELFDeps(hostPath)
	if err != nil {
		return nil, err
	}
	files := append([]initramfs.ELFFile{{Host: hostPath, Dest: dest}}, deps...)
	var es []entry
	for _, f := range files {
		data, err := os.ReadFile(f.Host)
		if err != nil {
			return nil, err
		}
		es = append(es, entry{Path: strings.TrimPrefix(f.Dest, "/"), Mode: 0o755, Data: data})
	}
	// The loader at the path the program names (PT_INTERP), when the
	// host's merged /usr put it elsewhere in the list.
	if len(deps) > 0 && !strings.HasPrefix(deps[0].Dest, "/lib64/") {
		es = append(es, entry{Path: "lib64", Link: "usr/lib64"})
	}
	return es, nil
}

// layerImage is an amd64 Linux image of one layer holding es, with cfg
// (entrypoint, command, environment).
func layerImage(es []entry, cfg v1.Config) (v1.Image, error) {
	data, err := layerTar(es)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "kiln tests/conformance"}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// layerTar writes es sorted by path, each file's missing parent
// directories first, later entries of one path replacing earlier ones.
func layerTar(es []entry) ([]byte, error) {
	byPath := map[string]entry{}
	for _, e := range es {
		e.Path = path.Clean(e.Path)
		byPath[e.Path] = e
	}
	for p := range byPath {
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = entry{Path: d, Mode: 0o755, Dir: true}
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := byPath[p]
		h := &tar.Header{Name: p, Mode: e.Mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case e.Dir:
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
		case e.Link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.Link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// shellPath is the PATH of upstream's Alpine and busybox images.
const shellPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// busyboxImage is upstream's e2e busybox: the applets, sh as its command.
func busyboxImage() (v1.Image, error) {
	es, err := busyboxEntries()
	if err != nil {
		return nil, err
	}
	es = append(es, etcFiles("", "")...)
	return layerImage(es, v1.Config{Cmd: []string{"sh"}, Env: []string{shellPath}})
}

// agnhostImage is upstream's agnhost as its Dockerfile makes it, on
// busybox instead of Alpine: /agnhost (built from
// k8s.io/kubernetes/test/images/agnhost at kiln's version), /agnhost-2
// linked to it, /uploads, porter's certificate, the user and group some
// specs expect in the image (uid 1000 in gid 50000), the busybox applets
// for the specs' shell commands, and the host's curl when it has one.
// Alpine's dig, iperf, bash and socat are missing.
func agnhostImage(agnhostBin, kubeSrc string) (v1.Image, error) {
	bin, err := os.ReadFile(agnhostBin)
	if err != nil {
		return nil, err
	}
	es, err := busyboxEntries()
	if err != nil {
		return nil, err
	}
	es = append(es,
		entry{Path: "agnhost", Mode: 0o755, Data: bin},
		entry{Path: "agnhost-2", Link: "agnhost"},
		entry{Path: "uploads", Mode: 0o755, Dir: true},
	)
	for _, f := range []string{"localhost.crt", "localhost.key"} {
		data, err := os.ReadFile(filepath.Join(kubeSrc, "test/images/agnhost/porter", f))
		if err != nil {
			return nil, err
		}
		es = append(es, entry{Path: f, Mode: 0o644, Data: data})
	}
	if _, err := os.Stat("/usr/bin/curl"); err == nil {
		curl, err := hostProgram("/usr/bin/curl", "/usr/bin/curl")
		if err != nil {
			return nil, err
		}
		es = append(es, curl...)
	}
	es = append(es, etcFiles(
		"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n",
		"user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n")...)
	return layerImage(es, v1.Config{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Env: []string{shellPath}})
}

// pauseImage is kiln's own pause program (images/oci/pause, the node's
// sandbox) under upstream's pause name: specs run it as a container.
func pauseImage(pauseBin string) (v1.Image, error) {
	return registry.Image(oci.Image{Ref: pauseRef, Binary: "pause"}, pauseBin, nil)
}

// withLabel gives img a label, and with it a digest of its own.
func withLabel(img v1.Image, key, value string) (v1.Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg := cf.Config.DeepCopy()
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	cfg.Labels[key] = value
	return mutate.Config(img, *cfg)
}
