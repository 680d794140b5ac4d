package oci

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image describes one image kiln builds from a static Go binary.
type Image struct {
	Ref        string   // e.g. kiln.local/pause:v1
	Binary     string   // the program's name: bin/oci/<Binary> on the build host, /usr/bin/<Binary> in the image
	Entrypoint []string // default: the binary
	Cmd        []string
	Archive    string // file name under the image directory, e.g. pause.tar
}

// Builtin returns the images every node that runs pods carries.
func Builtin() []Image { return append([]Image(nil), builtin...) }

var builtin = []Image{
	// The sandbox every pod starts with.
	{Ref: PauseRef, Binary: "pause", Archive: "pause.tar"},
	// The cluster DNS (the addons' Deployment runs it with -conf). It runs
	// as root in the image, with only NET_BIND_SERVICE left by the
	// Deployment's securityContext, to bind port 53.
	{Ref: CoreDNSRef, Binary: "coredns", Archive: "coredns.tar"},
	// A small HTTP workload for trying the cluster out and for the tests.
	{Ref: EchoRef, Binary: "kiln-echo", Cmd: []string{"serve"}, Archive: "kiln-echo.tar"},
}

// epoch is every timestamp in the images: the same binary gives the same
// bytes.
var epoch = time.Unix(0, 0).UTC()

// Write builds the image from the binary at binPath and writes it to w as a
// docker-archive tarball (what containerd's import, "ctr images import" and
// "docker load" read).
func (im Image) Write(binPath string, w io.Writer) error {
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return fmt.Errorf("image %s: %w", im.Ref, err)
	}
	layerTar, err := singleFileTar("usr/bin/"+im.Binary, bin)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("image %s: layer: %w", im.Ref, err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: epoch}, CreatedBy: "kiln build: /usr/bin/" + im.Binary,
	}})
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = im.Entrypoint
	if len(cf.Config.Entrypoint) == 0 {
		cf.Config.Entrypoint = []string{"/usr/bin/" + im.Binary}
	}
	cf.Config.Cmd = im.Cmd
	cf.Config.Env = []string{"PATH=/usr/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tag, err := name.NewTag(im.Ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", im.Ref, err)
	}
	return tarball.Write(tag, img, w)
}

// singleFileTar is a layer holding one executable and its parent
// directories, with fixed owners and times.
func singleFileTar(p string, data []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := ""
	for _, d := range splitDirs(path.Dir(p)) {
		dir = path.Join(dir, d)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: 0o755, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func splitDirs(d string) []string {
	if d == "." || d == "/" || d == "" {
		return nil
	}
	return append(splitDirs(path.Dir(d)), path.Base(d))
}

// Inspect reads an image archive a user adds to an image (docker-archive,
// as "docker save" writes) and returns the references it holds. The error
// names the file.
func Inspect(archive string) ([]string, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(archive) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("image archive %s: not a docker-archive tarball (make one with \"docker save -o FILE IMAGE\"): %w", archive, err)
	}
	var refs []string
	for _, d := range m {
		refs = append(refs, d.RepoTags...)
	}
	if len(refs) == 0 {
		return nil, errors.New("image archive " + archive + ": holds no tagged image (docker save IMAGE:TAG, not an image ID)")
	}
	return refs, nil
}
