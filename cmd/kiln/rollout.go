package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/internal/nodeclient"
)

// rolloutOptions are kiln upgrade --all's.
type rolloutOptions struct {
	nodes        nodeFlags // clusterDir and stateDir; node unused
	images       map[string]upgradeImage
	trial        time.Duration
	force        bool
	drainTimeout time.Duration
}

// rolloutNode is one node of the cluster, as the rollout sees it.
type rolloutNode struct {
	name   string
	target nodeclient.Target
	image  *nodeapi.ImageStatus
	api    apiNode
}

// runRollout upgrades the cluster one node at a time, masters first
// (Kubernetes' skew policy: the API servers before the kubelets): each is
// cordoned, drained (PodDisruptionBudgets respected), upgraded with its
// trial, seen Ready again in the API, and uncordoned. Everything is
// checked before the first node is touched; a rollback stops the rollout
// (the node is back on its image, uncordoned) with the reason.
func runRollout(ctx context.Context, out io.Writer, o rolloutOptions) error {
	api, err := apiFor(o.nodes.clusterDir, o.nodes.stateDir)
	if err != nil {
		return err
	}
	apiNodes, err := api.nodes(ctx)
	if err != nil {
		return err
	}
	serverVersion, err := api.serverVersion(ctx)
	if err != nil {
		return err
	}
	var nodes []rolloutNode
	for _, an := range apiNodes {
		f := o.nodes
		f.node = an.Metadata.Name
		t, err := f.target()
		if err != nil {
			return fmt.Errorf("node %s: %w", an.Metadata.Name, err)
		}
		im, err := nodeImage(t, o.nodes.clusterDir)
		if err != nil {
			return err
		}
		nodes = append(nodes, rolloutNode{name: an.Metadata.Name, target: t, image: im, api: an})
	}
	// Masters first, then workers; by name within each.
	sort.SliceStable(nodes, func(i, j int) bool {
		mi, mj := nodes[i].image.Role == string(node.RoleMaster), nodes[j].image.Role == string(node.RoleMaster)
		if mi != mj {
			return mi
		}
		return nodes[i].name < nodes[j].name
	})
	plan, err := planRollout(serverVersion, nodes, o.images)
	if err != nil {
		return err
	}
	for _, line := range plan.lines {
		fmt.Fprintln(out, line)
	}
	start := time.Now()
	done := 0
	for _, n := range plan.todo {
		img := o.images[n.image.Role]
		nodeStart := time.Now()
		fmt.Fprintf(out, "node %s: draining\n", n.name)
		if err := api.drain(ctx, out, n.name, o.force, o.drainTimeout); err != nil {
			return fmt.Errorf("%w (node %s stays cordoned: kubectl uncordon %s)", err, n.name, n.name)
		}
		upErr := runUpgrade(ctx, out, n.target, o.nodes.clusterDir, img, o.trial, 0)
		if errors.As(upErr, new(notSent)) {
			// The node did not take it and did not reboot.
			return fmt.Errorf("%w; the rollout stops here (%d of %d nodes upgraded; node %s stays cordoned: kubectl uncordon %s)", upErr, done, len(plan.todo), n.name, n.name)
		}
		// Ready again in the API, on a new boot, whichever image it runs.
		if err := waitNodeReady(ctx, out, api, n.name, n.api.Status.NodeInfo.BootID, o.trial+10*time.Minute); err != nil {
			return fmt.Errorf("%v (node %s stays cordoned)", err, n.name)
		}
		if err := api.cordon(ctx, n.name, false); err != nil {
			return err
		}
		if upErr != nil {
			return fmt.Errorf("%w; the rollout stops here (%d of %d nodes upgraded; node %s is back on its image, uncordoned)", upErr, done, len(plan.todo), n.name)
		}
		done++
		fmt.Fprintf(out, "node %s: upgraded, Ready and uncordoned in %s\n", n.name, time.Since(nodeStart).Round(time.Second))
	}
	fmt.Fprintf(out, "cluster upgraded: %d nodes in %s\n", done, time.Since(start).Round(time.Second))
	return nil
}

// rolloutPlan is what a rollout will do.
type rolloutPlan struct {
	todo  []rolloutNode
	lines []string // for the person, one a node
}

// planRollout checks the rollout before anything is touched: every node to
// upgrade was booted from a kiln disk and has an image for its role, no
// trial is running, and Kubernetes' version-skew rules hold.
func planRollout(serverVersion string, nodes []rolloutNode, images map[string]upgradeImage) (rolloutPlan, error) {
	var p rolloutPlan
	var kubelets []string
	for _, n := range nodes {
		img, ok := images[n.image.Role]
		switch {
		case !ok:
			p.lines = append(p.lines, fmt.Sprintf("node %s (%s, release %s): no %s image given, left as it is", n.name, n.image.Role, n.image.Release, n.image.Role))
			kubelets = append(kubelets, n.api.Status.NodeInfo.KubeletVersion)
			continue
		case n.image.Slot == "":
			return p, fmt.Errorf("node %s booted from %s, not from a kiln disk with slots: it cannot be upgraded in place (PXE: serve the new image and reboot it); nothing was touched", n.name, n.image.Boot)
		case n.image.Trial:
			return p, fmt.Errorf("node %s runs an upgrade on trial: wait for its outcome (kiln status --node %s); nothing was touched", n.name, n.name)
		case n.image.Release == img.up.Release && n.image.Slots[n.image.Slot].ImageID == img.up.ImageID:
			p.lines = append(p.lines, fmt.Sprintf("node %s (%s): already runs release %s (image %s)", n.name, n.image.Role, img.up.Release, img.up.ImageID))
			continue
		}
		p.todo = append(p.todo, n)
		p.lines = append(p.lines, fmt.Sprintf("node %s (%s): release %s → %s", n.name, n.image.Role, n.image.Release, img.up.Release))
	}
	var masterV, workerV string
	if img, ok := images[string(node.RoleMaster)]; ok {
		masterV = img.kubernetesVersion
	}
	if img, ok := images[string(node.RoleWorker)]; ok {
		workerV = img.kubernetesVersion
	}
	if err := checkSkew(serverVersion, masterV, workerV, kubelets); err != nil {
		return p, fmt.Errorf("%w; nothing was touched", err)
	}
	return p, nil
}

// minorOf is a Kubernetes version's minor: v1.37.2 → 37.
func minorOf(v string) (int, error) {
	f := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(f) < 2 || f[0] != "1" {
		return 0, fmt.Errorf("%q is not a Kubernetes 1.x version", v)
	}
	m, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, fmt.Errorf("%q is not a Kubernetes 1.x version", v)
	}
	return m, nil
}

// checkSkew applies Kubernetes' version-skew policy to a rollout from the
// API server's version: the masters' image may stay on its minor or go one
// up, never down and never two; the workers' kubelets may not be newer
// than the API servers will be, nor more than three minors older, and
// neither may the kubelets left as they are. "" for an image: none given
// (or one that records no version, which is not checked).
func checkSkew(server, master, worker string, untouched []string) error {
	cur, err := minorOf(server)
	if err != nil {
		return fmt.Errorf("the API server's version: %w", err)
	}
	target := cur
	if master != "" {
		m, err := minorOf(master)
		if err != nil {
			return fmt.Errorf("the master image's Kubernetes version: %w", err)
		}
		switch {
		case m < cur:
			return fmt.Errorf("the master image runs Kubernetes %s, older than the cluster's %s: Kubernetes does not downgrade across minor versions", master, server)
		case m > cur+1:
			return fmt.Errorf("the master image runs Kubernetes %s, more than one minor version past the cluster's %s: upgrade to 1.%d first", master, server, cur+1)
		}
		target = m
	}
	if worker != "" {
		w, err := minorOf(worker)
		if err != nil {
			return fmt.Errorf("the worker image's Kubernetes version: %w", err)
		}
		switch {
		case w > target:
			return fmt.Errorf("the worker image runs Kubernetes %s, newer than the API servers' 1.%d: a kubelet may not be newer than its API server", worker, target)
		case w < target-3:
			return fmt.Errorf("the worker image runs Kubernetes %s, more than three minor versions older than the API servers' 1.%d", worker, target)
		}
	}
	for _, v := range untouched {
		if k, err := minorOf(v); err == nil && k < target-3 {
			return fmt.Errorf("a kubelet left on %s would be more than three minor versions older than the API servers' 1.%d: upgrade the workers too", v, target)
		}
	}
	return nil
}

// waitNodeReady waits until node is Ready in the API on a boot other than
// bootID.
func waitNodeReady(ctx context.Context, out io.Writer, api *kubeAPI, name, bootID string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := api.node(ctx, name)
		if err == nil && n.ready() && n.Status.NodeInfo.BootID != bootID {
			return nil
		}
		if time.Now().After(deadline) {
			why := "not Ready on a new boot"
			if err != nil {
				why = err.Error()
			}
			return fmt.Errorf("node %s: %s after %s", name, why, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(3 * time.Second):
		}
	}
}
