package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/images/builder"
	"kiln/images/kernel"
)

// defaultClusterDir is where "kiln gen cluster" writes and where "kiln
// build" looks when --cluster is not given.
const defaultClusterDir = "out/cluster"

type buildFlags struct {
	role, nodeBinary, initBinary, clusterDir, config, kernel, out, cacheDir string
	binDir, token, release                                                  string
	formats, images                                                         []string
	appendArgs                                                              []string
	diskSizeGiB                                                             int
}

func buildCommand() *cobra.Command {
	var f buildFlags
	c := &cobra.Command{
		Use:   "build --role master|worker",
		Short: "Build bootable images of a master or a worker (kernel, ISO, qcow2, PXE)",
		Long: `Build the images of one node role from the node binary (bin/kiln-node) and a
cluster directory. The node binary becomes /init of an initramfs that also
holds the node config (/etc/kiln/config.yaml), the cluster material the role
needs (/etc/kiln/cluster: all of it for a master; for a worker only
cluster.yaml, with the CA certificate's hash, and the bootstrap token, never
a private key), the kernel modules and a few tools. A node that runs pods (a
worker; a master unless its config says runPods: false) also gets runc,
containerd's shim, the CNI plugins and the images it imports into
containerd at boot: kiln's pause, CoreDNS and kiln-echo images, built here
from bin/oci/*, and any --images archives. Then each format is written to
--out:

` + formatHelp() + `
Without --cluster, kiln uses ` + defaultClusterDir + ` and generates it the first time
(keep it: every node built from it trusts its CAs).

The qcow2 disk holds the node's state: rebuilding it starts the node afresh.`,
		Example: `  kiln build --role master
  kiln build --role worker --format iso,pxe --cluster clusters/prod --config worker.yaml
  kiln build --role master --kernel generic --out out/metal
  kiln build --role worker --images myapp.tar,redis.tar
  kiln build --role worker --format pxe --token abcdef.0123456789abcdef   # a token from kiln gen token`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runBuild(ctx, c.OutOrStdout(), f, c.Flags().Changed("cluster"))
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.role, "role", "", "node role: master or worker (required)")
	fl.StringVar(&f.nodeBinary, "node-binary", "bin/kiln-node", "the node binary, /init of the root image")
	fl.StringVar(&f.initBinary, "init-binary", "", "stage 1, /init of the initramfs, which mounts the root image (default: kiln-init beside the node binary)")
	fl.StringVar(&f.clusterDir, "cluster", defaultClusterDir, "cluster directory (kiln gen cluster)")
	fl.StringVar(&f.config, "config", "", "node config file embedded as /etc/kiln/config.yaml (default: a minimal one with the role)")
	fl.StringSliceVar(&f.formats, "format", nil, "formats to build, comma-separated: "+strings.Join(builder.FormatNames(), ",")+" (default all)")
	fl.StringVar(&f.kernel, "kernel", "cloud", "Debian kernel flavour: cloud (VMs) or generic (physical servers)")
	fl.StringVarP(&f.out, "out", "o", "", "output directory (default out/<role>)")
	fl.StringVar(&f.cacheDir, "cache-dir", "", "kernel download cache (default $KILN_CACHE_DIR or out/cache)")
	fl.StringSliceVar(&f.appendArgs, "append", nil, "extra kernel command line arguments")
	fl.StringVar(&f.binDir, "bin-dir", "", "where make build put runc, the containerd shim, cni/* and oci/* (default: the node binary's directory)")
	fl.StringSliceVar(&f.images, "images", nil, "image archives (docker save) to import at boot, comma-separated, besides kiln's own")
	fl.StringVar(&f.token, "token", "", "worker images: join with this bootstrap token instead of the cluster directory's (kiln gen token)")
	fl.StringVar(&f.release, "release", kilnVersion(), "the image's version string (os-release's VERSION_ID): what its nodes report, and what kiln upgrade compares")
	fl.IntVar(&f.diskSizeGiB, "disk-size", builder.DefaultDiskSize>>30, "qcow2 disk size in GiB (sparse)")
	return c
}

// releaseRE is what --release may be: it ends up in os-release and in
// every node's status.
var releaseRE = regexp.MustCompile(`^[A-Za-z0-9._+~-]{1,64}$`)

func formatHelp() string {
	var b strings.Builder
	for _, f := range builder.Formats() {
		fmt.Fprintf(&b, "  %-7s %s\n", f.Name, f.Help)
	}
	return b.String()
}

// request turns the flags into a build request; flag mistakes are usage
// errors.
func (f buildFlags) request() (builder.Request, error) {
	var r builder.Request
	switch f.role {
	case "":
		return r, usageError{errors.New("kiln build needs --role master or --role worker\nsee 'kiln build --help'")}
	case string(node.RoleMaster), string(node.RoleWorker):
	default:
		return r, usageError{fmt.Errorf("--role %q: want master or worker", f.role)}
	}
	flavour, err := kernel.ParseFlavour(f.kernel)
	if err != nil {
		return r, usageError{fmt.Errorf("--kernel %q: want cloud or generic", f.kernel)}
	}
	for _, name := range f.formats {
		if !slices.Contains(builder.FormatNames(), strings.TrimSpace(name)) {
			return r, usageError{fmt.Errorf("--format %q: unknown format (want one or more of %s)", name, strings.Join(builder.FormatNames(), ","))}
		}
	}
	if !releaseRE.MatchString(f.release) {
		return r, usageError{fmt.Errorf("--release %q: want 1-64 letters, digits and . _ + ~ -", f.release)}
	}
	if f.diskSizeGiB < 1 {
		return r, usageError{fmt.Errorf("--disk-size %d: want a size in GiB, at least 1", f.diskSizeGiB)}
	}
	r = builder.Request{
		Role:       node.Role(f.role),
		NodeBinary: f.nodeBinary,
		InitBinary: f.initBinary,
		ClusterDir: f.clusterDir,
		ConfigFile: f.config,
		OutDir:     f.out,
		Kernel:     flavour,
		Formats:    f.formats,
		CacheDir:   f.cacheDir,
		Append:     f.appendArgs,
		DiskSize:   int64(f.diskSizeGiB) << 30,
		Version:    f.release,
		// The node binary kiln builds with make is from the same go.mod.
		KubernetesVersion: kubeVersionOrEmpty(),
		BinDir:            f.binDir,
		Images:            f.images,

		BootstrapToken: f.token,
	}
	if r.OutDir == "" {
		r.OutDir = filepath.Join("out", f.role)
	}
	return r, nil
}

func runBuild(ctx context.Context, stdout io.Writer, f buildFlags, clusterGiven bool) error {
	req, err := f.request()
	if err != nil {
		return err
	}
	if err := req.Check(); err != nil {
		return err
	}
	// The default cluster directory is made the first time; one named
	// with --cluster must exist (a typo must not start a new cluster).
	if !clusterGiven {
		_, err := os.Stat(filepath.Join(req.ClusterDir, cluster.ConfigFile))
		if errors.Is(err, fs.ErrNotExist) {
			cl, err := cluster.Generate(req.ClusterDir, cluster.Options{Name: "kiln"})
			if err != nil {
				return fmt.Errorf("generating the default cluster directory: %w", err)
			}
			fmt.Fprintf(stdout, "kiln build: no cluster directory given and %s had none: generated cluster %s there (CA hash %s); keep it, every node built from it trusts its CAs\n",
				req.ClusterDir, cl.Name, cl.CAHash)
		}
	}
	req.Progress = stdout
	res, err := builder.Build(ctx, req)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kiln build: boot it with: kiln run --image %s\n", res.OutDir)
	return nil
}

// kubeVersionOrEmpty is the Kubernetes version make stamped, or "" for a
// kiln built without make.
func kubeVersionOrEmpty() string {
	if strings.HasPrefix(kubernetesVersion, "v") {
		return kubernetesVersion
	}
	return ""
}
