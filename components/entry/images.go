package entry

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
)

// criNamespace is the containerd namespace the CRI plugin (and so the
// kubelet) uses.
const criNamespace = "k8s.io"

// runImportImages imports every image archive (*.tar) of a directory into
// containerd, unpacks it for the overlayfs snapshotter and pins it, so the
// kubelet's image garbage collection never deletes an image that could not
// be pulled back.
func runImportImages(args []string) int {
	flags := flag.NewFlagSet("import-images", flag.ContinueOnError)
	address := flags.String("address", "", "containerd socket")
	dir := flags.String("dir", "", "directory of image archives (*.tar)")
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
	for _, a := range archives {
		start := time.Now()
		names, err := importArchive(ctx, client, a)
		if err != nil {
			fmt.Fprintf(os.Stderr, "import-images: %s: %v\n", a, err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "import-images: %s: %s (%.1fs)\n", filepath.Base(a), strings.Join(names, ", "), time.Since(start).Seconds())
	}
	return 0
}

func importArchive(ctx context.Context, client *containerd.Client, path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	imgs, err := client.Import(ctx, f, containerd.WithImportPlatform(platforms.DefaultStrict()))
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	var names []string
	for _, img := range imgs {
		if img.Labels == nil {
			img.Labels = map[string]string{}
		}
		// Pinned images are never removed by the CRI plugin's or the
		// kubelet's garbage collection.
		img.Labels["io.cri-containerd.pinned"] = "pinned"
		if _, err := client.ImageService().Update(ctx, img, "labels.io.cri-containerd.pinned"); err != nil {
			return nil, fmt.Errorf("pinning %s: %w", img.Name, err)
		}
		i := containerd.NewImageWithPlatform(client, img, platforms.DefaultStrict())
		if err := i.Unpack(ctx, "overlayfs"); err != nil {
			return nil, fmt.Errorf("unpacking %s: %w", img.Name, err)
		}
		names = append(names, img.Name)
	}
	return names, nil
}
