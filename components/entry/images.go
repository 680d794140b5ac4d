package entry

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"

	"kiln/pki"
)

// criNamespace is the containerd namespace the CRI plugin (and so the
// kubelet) uses.
const criNamespace = "k8s.io"

// pinnedLabel keeps an image from the CRI plugin's and the kubelet's
// garbage collection.
const pinnedLabel = "io.cri-containerd.pinned"

// runImportImages imports every image archive (*.tar) of a directory into
// containerd, unpacks it for the overlayfs snapshotter and pins it, so the
// kubelet's image garbage collection never deletes an image that could not
// be pulled back.
//
// With --record, an archive imported at an earlier start is skipped when
// it has not changed and its images are still in containerd as they were
// imported (a state disk keeps containerd's content across boots): the
// record names, for each archive, its fingerprint and the images it gave.
func runImportImages(args []string) int {
	flags := flag.NewFlagSet("import-images", flag.ContinueOnError)
	address := flags.String("address", "", "containerd socket")
	dir := flags.String("dir", "", "directory of image archives (*.tar)")
	record := flags.String("record", "", "file recording the archives imported, to skip them at the next start while their images are still in containerd (empty: import every archive at every start)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *address == "" || *dir == "" {
		return usageError("import-images", errors.New("--address and --dir are required"))
	}
	archives, err := filepath.Glob(filepath.Join(*dir, "*.tar"))
	if err != nil {
		return usageError("import-images", err)
	}
	if len(archives) == 0 {
		if _, err := os.Stat(*dir); errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(os.Stderr, "import-images: %s does not exist: no images to import\n", *dir)
			return 0
		}
		fmt.Fprintf(os.Stderr, "import-images: no *.tar in %s\n", *dir)
		return 0
	}
	client, err := containerd.New(*address, containerd.WithDefaultNamespace(criNamespace))
	if err != nil {
		fmt.Fprintf(os.Stderr, "import-images: containerd: %v\n", err)
		return 1
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), criNamespace), 20*time.Minute)
	defer cancel()
	if err := importAll(ctx, containerdImporter{client}, archives, *record, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "import-images: %v\n", err)
		return 1
	}
	return 0
}

// importedImage is one image an archive gave: its name and the digest of
// its target (manifest or index).
type importedImage struct {
	Name   string `json:"name"`
	Digest string `json:"digest"`
}

// importedArchive is what the record keeps of one archive.
type importedArchive struct {
	Fingerprint string          `json:"fingerprint"`
	Images      []importedImage `json:"images"`
}

// importRecord is the --record file: archive file name → what it gave.
type importRecord struct {
	Archives map[string]importedArchive `json:"archives"`
}

// imageImporter is containerd to importAll (tests fake it).
type imageImporter interface {
	// importArchive imports, pins and unpacks the archive's images.
	importArchive(ctx context.Context, path string) ([]importedImage, error)
	// missing says why an image imported before cannot be used as it is
	// (gone, another image under its name, not pinned, not unpacked), or
	// "" if it can.
	missing(ctx context.Context, img importedImage) string
}

// importAll imports the archives, skipping those the record (if
// recordPath is set) says were imported unchanged and whose images are
// all still there, and keeps the record up to date after each import.
func importAll(ctx context.Context, imp imageImporter, archives []string, recordPath string, out io.Writer) error {
	start := time.Now()
	rec := importRecord{Archives: map[string]importedArchive{}}
	if recordPath != "" {
		var err error
		if rec, err = loadImportRecord(recordPath); err != nil {
			fmt.Fprintf(out, "import-images: %v: importing every archive\n", err)
		}
	}
	present := map[string]bool{}
	var imported, skipped []string
	for _, a := range archives {
		base := filepath.Base(a)
		present[base] = true
		fp := ""
		if recordPath != "" {
			var err error
			if fp, err = archiveFingerprint(a); err != nil {
				return fmt.Errorf("%s: %w", a, err)
			}
			if prev, ok := rec.Archives[base]; ok && prev.Fingerprint == fp {
				why := ""
				for _, img := range prev.Images {
					if why = imp.missing(ctx, img); why != "" {
						break
					}
				}
				if why == "" && len(prev.Images) > 0 {
					skipped = append(skipped, base)
					continue
				}
				if why != "" {
					fmt.Fprintf(out, "import-images: %s: imported again: %s\n", base, why)
				}
			}
		}
		t := time.Now()
		imgs, err := imp.importArchive(ctx, a)
		if err != nil {
			return fmt.Errorf("%s: %w", a, err)
		}
		names := make([]string, len(imgs))
		for i, img := range imgs {
			names[i] = img.Name
		}
		fmt.Fprintf(out, "import-images: %s: %s (%.1fs)\n", base, strings.Join(names, ", "), time.Since(t).Seconds())
		imported = append(imported, base)
		if recordPath != "" {
			rec.Archives[base] = importedArchive{Fingerprint: fp, Images: imgs}
			if err := saveImportRecord(recordPath, rec); err != nil {
				return err
			}
		}
	}
	if recordPath != "" {
		stale := false
		for name := range rec.Archives {
			if !present[name] {
				delete(rec.Archives, name)
				stale = true
			}
		}
		if stale {
			if err := saveImportRecord(recordPath, rec); err != nil {
				return err
			}
		}
	}
	summary := fmt.Sprintf("import-images: %d imported, %d skipped", len(imported), len(skipped))
	switch {
	case len(skipped) > 0:
		summary += " (in containerd since an earlier start: " + strings.Join(skipped, ", ") + ")"
	case recordPath == "":
		summary += " (no --record: every archive is imported at every start)"
	}
	fmt.Fprintf(out, "%s in %.1fs\n", summary, time.Since(start).Seconds())
	return nil
}

// loadImportRecord reads the record; a missing one is empty, an
// unreadable one is empty and an error (every archive is imported again,
// and the record written anew).
func loadImportRecord(path string) (importRecord, error) {
	rec := importRecord{Archives: map[string]importedArchive{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return rec, nil
	}
	if err == nil {
		err = json.Unmarshal(data, &rec)
	}
	if err != nil || rec.Archives == nil {
		return importRecord{Archives: map[string]importedArchive{}}, fmt.Errorf("the record %s is unreadable (%v)", path, err)
	}
	return rec, nil
}

func saveImportRecord(path string, rec importRecord) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := pki.WriteFile(path, append(data, '\n'), false); err != nil {
		return fmt.Errorf("recording the imported archives: %w", err)
	}
	return nil
}

// fingerprintWhole is the size of the entries an archive's fingerprint
// reads whole.
const fingerprintWhole = 1 << 20

// archiveFingerprint identifies an archive's content without reading all
// of it: a hash of its size, each entry's name, type and size, and the
// bytes of the entries up to fingerprintWhole (manifest.json, index.json,
// image configs and OCI manifests: what names the digests of the rest).
// Layers are skipped over by seeking, so it costs a few reads whatever the
// archive's size. The builder gives every file in an image the same
// modification time, so a file's time and size alone would not do. An
// archive that is not a plain tar (compressed) is hashed whole.
func archiveFingerprint(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "kiln image archive v1\x00%d\x00", st.Size())
	tr := tar.NewReader(f)
	entries := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF && entries > 0 {
			break
		}
		if err != nil {
			return hashWhole(f)
		}
		entries++
		fmt.Fprintf(h, "%s\x00%c\x00%d\x00", hdr.Name, hdr.Typeflag, hdr.Size)
		if hdr.Size <= fingerprintWhole {
			if _, err := io.Copy(h, tr); err != nil {
				return hashWhole(f)
			}
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func hashWhole(f *os.File) (string, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	h := sha256.New()
	io.WriteString(h, "kiln image archive, whole\x00")
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// containerdImporter is the node's containerd.
type containerdImporter struct{ client *containerd.Client }

func (c containerdImporter) importArchive(ctx context.Context, path string) ([]importedImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	imgs, err := c.client.Import(ctx, f, containerd.WithImportPlatform(platforms.DefaultStrict()))
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	var out []importedImage
	for _, img := range imgs {
		if img.Labels == nil {
			img.Labels = map[string]string{}
		}
		// Pinned images are never removed by the CRI plugin's or the
		// kubelet's garbage collection.
		img.Labels[pinnedLabel] = "pinned"
		if _, err := c.client.ImageService().Update(ctx, img, "labels."+pinnedLabel); err != nil {
			return nil, fmt.Errorf("pinning %s: %w", img.Name, err)
		}
		i := containerd.NewImageWithPlatform(c.client, img, platforms.DefaultStrict())
		if err := i.Unpack(ctx, "overlayfs"); err != nil {
			return nil, fmt.Errorf("unpacking %s: %w", img.Name, err)
		}
		if err := c.discardLayers(ctx, img); err != nil {
			fmt.Fprintf(os.Stderr, "import-images: %s: keeping its layers' blobs: %v\n", img.Name, err)
		}
		out = append(out, importedImage{Name: img.Name, Digest: img.Target.Digest.String()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// discardLayers deletes the compressed layer blobs of an unpacked image
// from containerd's content store: the snapshots hold the files, and on a
// diskless node the blobs would stay in RAM (tmpfs) for nothing, 20 MB for
// CoreDNS alone. The CRI plugin does the same for images it pulls when
// discard_unpacked_layers is set; the image stays usable, its manifest
// and config are kept.
func (c containerdImporter) discardLayers(ctx context.Context, img images.Image) error {
	cs := c.client.ContentStore()
	m, err := images.Manifest(ctx, cs, img.Target, platforms.DefaultStrict())
	if err != nil {
		return err
	}
	for _, l := range m.Layers {
		if err := cs.Delete(ctx, l.Digest); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
	}
	return nil
}

func (c containerdImporter) missing(ctx context.Context, want importedImage) string {
	img, err := c.client.ImageService().Get(ctx, want.Name)
	if err != nil {
		return fmt.Sprintf("%s is not in containerd (%v)", want.Name, err)
	}
	if got := img.Target.Digest.String(); got != want.Digest {
		return fmt.Sprintf("%s is %s in containerd, not %s", want.Name, got, want.Digest)
	}
	if img.Labels[pinnedLabel] != "pinned" {
		return want.Name + " is not pinned"
	}
	unpacked, err := containerd.NewImageWithPlatform(c.client, img, platforms.DefaultStrict()).IsUnpacked(ctx, "overlayfs")
	if err != nil {
		return fmt.Sprintf("%s: %v", want.Name, err)
	}
	if !unpacked {
		return want.Name + " is not unpacked"
	}
	return ""
}
