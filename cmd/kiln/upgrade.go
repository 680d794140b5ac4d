package main

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/cluster"
	"kiln/configs/nodeapi"
	"kiln/images/builder"
	"kiln/internal/nodeclient"
)

func upgradeCommand() *cobra.Command {
	var f nodeFlags
	var imageDirs []string
	var all, force bool
	var trial, wait, drainTimeout time.Duration
	c := &cobra.Command{
		Use:   "upgrade --node NODE --image DIR | --all --image DIR [--image DIR]",
		Short: "Upgrade disk-booted nodes to another image, with rollback",
		Long: `Upgrade a node booted from a kiln disk (the qcow2 image, or a disk written
from it) to the image in DIR (kiln build --out DIR; its kernel format).
The disk's boot partition has two slots: kiln checks the image (its role
and cluster must be the node's, its files must match its manifest), the
node writes it to the slot it did not boot from, stops its components and
boots the new slot on trial, by kexec where the kernel allows it (no
firmware POST), else through the firmware. Once every component is ready
on the new image, the node makes that slot the default. If the new image
does not get there within --trial-timeout (it stops early, hangs, panics,
or is reset), the node boots the previous slot again by itself, and kiln
says why. kiln waits for either and exits non-zero on a rollback.

With --all, the whole cluster, one node at a time, masters first (give
one --image per role; nodes of a role without one are left as they are):
each node is cordoned, drained (evictions that a PodDisruptionBudget
refuses are retried until it allows them; DaemonSets' pods stay), upgraded,
seen Ready again in the cluster's API and uncordoned. Before the first node
is touched, kiln checks every node can be upgraded and Kubernetes'
version-skew rules (API servers one minor at a time, never down; kubelets
never newer than the API servers, at most three minors older). A rollback
stops the rollout there. With --node, kiln does not drain: drain the node
first (kubectl drain) when its pods must move before it reboots.

Diskless (PXE) nodes are upgraded by serving the new image (kiln pxe
serve) and rebooting them (kiln reboot).` + "\n" + nodeHelp,
		Example: `  kiln upgrade --node kiln-worker-1 --image out/worker-v2
  kiln upgrade --node 192.168.1.21 --image out/worker-v2 --cluster out/cluster
  kiln upgrade --all --image out/master-v2 --image out/worker-v2`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if len(imageDirs) == 0 {
				return usageError{errors.New("--image is required (an image directory: kiln build --out DIR)")}
			}
			images := map[string]upgradeImage{}
			for _, dir := range imageDirs {
				img, err := readUpgradeImage(dir, f.clusterDir)
				if err != nil {
					return err
				}
				if prev, ok := images[img.up.Role]; ok {
					return usageError{fmt.Errorf("--image %s and --image %s are both %s images: give one per role", prev.dir, dir, img.up.Role)}
				}
				images[img.up.Role] = img
			}
			ctx, cancel := signalContext()
			defer cancel()
			if all {
				if f.node != "" {
					return usageError{errors.New("--all upgrades every node: leave out --node")}
				}
				return runRollout(ctx, c.OutOrStdout(), rolloutOptions{nodes: f, images: images, trial: trial, force: force, drainTimeout: drainTimeout})
			}
			if len(images) != 1 {
				return usageError{errors.New("one --image for one --node (several only with --all)")}
			}
			t, err := f.target()
			if err != nil {
				return err
			}
			for _, img := range images {
				return runUpgrade(ctx, c.OutOrStdout(), t, f.clusterDir, img, trial, wait)
			}
			return nil
		},
	}
	f.register(c)
	c.Flags().StringSliceVar(&imageDirs, "image", nil, "the image directory to upgrade to (kiln build --out DIR); with --all, one per role")
	c.Flags().BoolVar(&all, "all", false, "upgrade every node of the cluster, one at a time, masters first")
	c.Flags().BoolVar(&force, "force", false, "with --all: evict pods that no controller recreates too (they are gone for good)")
	c.Flags().DurationVar(&drainTimeout, "drain-timeout", 10*time.Minute, "with --all: how long a node's drain may take")
	c.Flags().DurationVar(&trial, "trial-timeout", nodeapi.DefaultTrialTimeout, "how long the new image has to bring the node to ready before it goes back to the previous one")
	c.Flags().DurationVar(&wait, "wait", 0, "how long kiln waits for the outcome (default: the trial timeout and 5 minutes more)")
	return c
}

// upgradeImage is an image directory read for an upgrade.
type upgradeImage struct {
	dir               string
	up                nodeapi.Upgrade
	kernel, initrd    string
	kubernetesVersion string // "" when the image does not record it
}

// readUpgradeImage opens an image directory and describes it for the
// node; the files are hashed here, and the node checks them again.
func readUpgradeImage(dir, clusterDir string) (upgradeImage, error) {
	var u upgradeImage
	d, err := builder.Open(dir)
	if err != nil {
		return u, err
	}
	k, err := d.Kernel()
	if err != nil {
		return u, err
	}
	if d.ClusterCAHash == "" || d.Release == "" {
		return u, fmt.Errorf("image %s records no cluster CA or release (built by an older kiln): rebuild it", dir)
	}
	cl, err := cluster.LoadForWorker(clusterDir)
	if err != nil {
		return u, err
	}
	if d.ClusterCAHash != cl.CAHash {
		return u, fmt.Errorf("image %s belongs to another cluster (its CA %s; %s's is %s): refused, nothing was sent", dir, d.ClusterCAHash, clusterDir, cl.CAHash)
	}
	u.dir, u.kernel, u.initrd, u.kubernetesVersion = dir, k.Vmlinuz, k.Initramfs, d.KubernetesVersion
	u.up = nodeapi.Upgrade{ImageID: d.ID, Role: string(d.Role), Release: d.Release, ClusterCAHash: d.ClusterCAHash, Cmdline: d.Cmdline}
	if u.up.KernelSize, u.up.KernelSHA256, err = hashFile(u.kernel); err != nil {
		return u, err
	}
	if u.up.InitrdSize, u.up.InitrdSHA256, err = hashFile(u.initrd); err != nil {
		return u, err
	}
	return u, nil
}

func hashFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return n, hex.EncodeToString(h.Sum(nil)), err
}

// runUpgrade checks the image against the node, sends it, and waits for
// the trial's outcome.
func runUpgrade(ctx context.Context, out io.Writer, t nodeclient.Target, clusterDir string, img upgradeImage, trial, wait time.Duration) error {
	img.up.TrialTimeout = trial
	before, err := nodeImage(t, clusterDir)
	if err != nil {
		return notSent{err}
	}
	if before.Role != "" && before.Role != img.up.Role {
		return notSent{fmt.Errorf("image %s is a %s image and node %s is a %s: refused, nothing was sent", img.dir, img.up.Role, t, before.Role)}
	}
	if before.Slot == "" {
		return notSent{fmt.Errorf("node %s booted from %s, not from a kiln disk with slots: upgrade a diskless node by serving the new image (kiln pxe serve) and rebooting it", t, before.Boot)}
	}
	fmt.Fprintf(out, "node %s: release %s (slot %s) → release %s (image %s)\n", t, before.Release, before.Slot, img.up.Release, img.up.ImageID)
	start := time.Now()
	acc, err := sendUpgrade(ctx, t, clusterDir, img)
	if err != nil {
		return notSent{err}
	}
	fmt.Fprintf(out, "%s (sent in %s)\n", acc.Message, time.Since(start).Round(100*time.Millisecond))
	if wait == 0 {
		wait = trial + 5*time.Minute
	}
	res, err := waitTrial(ctx, out, t, clusterDir, acc.Slot, start, wait)
	if err != nil {
		return err
	}
	took := time.Since(start).Round(time.Second)
	if res.Result == nodeapi.TrialGood {
		fmt.Fprintf(out, "node %s: upgraded to release %s in %s; slot %s is its default now\n", t, res.Release, took, acc.Slot)
		return nil
	}
	return fmt.Errorf("node %s: the upgrade to release %s was rolled back after %s: %s", t, img.up.Release, took, res.Reason)
}

// notSent is an upgrade refused or failed before the node accepted it: the
// node did not reboot.
type notSent struct{ error }

func (e notSent) Unwrap() error { return e.error }

// nodeImage is what the node says of its image.
func nodeImage(t nodeclient.Target, clusterDir string) (*nodeapi.ImageStatus, error) {
	body, err := nodeGetFrom(t, clusterDir, nodeapi.PathStatus)
	if err != nil {
		return nil, err
	}
	var st nodeapi.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("node %s: its status: %w", t, err)
	}
	if st.Image == nil {
		return nil, fmt.Errorf("node %s reports no image: it is not run by kiln's PID 1, or runs a kiln too old to be upgraded in place", t)
	}
	return st.Image, nil
}

// sendUpgrade streams the image to the node: a tar of the description,
// the kernel and the initramfs.
func sendUpgrade(ctx context.Context, t nodeclient.Target, clusterDir string, img upgradeImage) (nodeapi.UpgradeAccepted, error) {
	var acc nodeapi.UpgradeAccepted
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeUpgradeTar(pw, img)) }()
	resp, err := nodeSendTo(ctx, t, clusterDir, http.MethodPost, nodeapi.PathUpgrade, pr, http.Header{"Content-Type": {"application/x-tar"}})
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return acc, err
	}
	defer resp.Body.Close()
	body, err := nodeclient.ReadAnswer(t, resp, 64<<10)
	if err != nil {
		return acc, err
	}
	if err := json.Unmarshal(body, &acc); err != nil {
		return acc, fmt.Errorf("node %s: its answer: %w", t, err)
	}
	return acc, nil
}

func writeUpgradeTar(w io.Writer, img upgradeImage) error {
	tw := tar.NewWriter(w)
	desc, err := json.Marshal(img.up)
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: nodeapi.UpgradeManifestName, Mode: 0o644, Size: int64(len(desc))}); err != nil {
		return err
	}
	if _, err := tw.Write(desc); err != nil {
		return err
	}
	for _, f := range []struct {
		name, path string
		size       int64
	}{{nodeapi.UpgradeKernelName, img.kernel, img.up.KernelSize}, {nodeapi.UpgradeInitrdName, img.initrd, img.up.InitrdSize}} {
		file, err := os.Open(f.path)
		if err != nil {
			return err
		}
		err = tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: f.size})
		if err == nil {
			_, err = io.Copy(tw, io.LimitReader(file, f.size))
		}
		file.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// waitTrial polls the node until its trial in slot ended: good, or rolled
// back. While it reboots the node does not answer; that is expected.
func waitTrial(ctx context.Context, out io.Writer, t nodeclient.Target, clusterDir, slot string, since time.Time, wait time.Duration) (*nodeapi.TrialResult, error) {
	deadline := time.Now().Add(wait)
	said := ""
	for {
		img, err := nodeImage(t, clusterDir)
		line := ""
		switch {
		case err != nil:
			line = "waiting for the node to answer again (it is rebooting)"
		case img.LastUpgrade == nil || img.LastUpgrade.Slot != slot || img.LastUpgrade.Started.Before(since.Add(-time.Minute)):
			line = "waiting for the node to boot the new slot"
		case img.LastUpgrade.Result == nodeapi.TrialRunning:
			if img.Slot == slot {
				line = fmt.Sprintf("node up on slot %s (release %s), on trial until %s: waiting for every component to be ready",
					slot, img.Release, img.LastUpgrade.Deadline.Local().Format("15:04:05"))
			} else {
				line = "waiting for the node to boot the new slot"
			}
		default:
			return img.LastUpgrade, nil
		}
		if line != said {
			fmt.Fprintf(out, "  %s: %s\n", time.Since(since).Round(time.Second), line)
			said = line
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("node %s: no outcome of the upgrade after %s (last: %s); kiln status --node shows where it is", t, wait, strings.TrimPrefix(said, "waiting for "))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("node %s: stopped waiting (%v); the upgrade goes on without kiln: kiln status --node shows it", t, ctx.Err())
		case <-time.After(3 * time.Second):
		}
	}
}
