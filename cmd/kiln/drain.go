package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// apiPod is what a drain reads of a Pod.
type apiPod struct {
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp *time.Time        `json:"deletionTimestamp"`
		OwnerReferences   []struct {
			Kind string `json:"kind"`
		} `json:"ownerReferences"`
	} `json:"metadata"`
	Status struct {
		Phase string `json:"phase"`
	} `json:"status"`
}

func (p apiPod) id() string { return p.Metadata.Namespace + "/" + p.Metadata.Name }

// drainKind says what a drain does with a pod: "" evict it, or why it is
// left (its node's own, or done).
func (p apiPod) drainKind() string {
	if _, ok := p.Metadata.Annotations["kubernetes.io/config.mirror"]; ok {
		return "static"
	}
	for _, o := range p.Metadata.OwnerReferences {
		if o.Kind == "DaemonSet" {
			return "daemonset"
		}
	}
	if p.Status.Phase == "Succeeded" || p.Status.Phase == "Failed" {
		return "done"
	}
	return ""
}

// unmanaged reports whether nothing recreates the pod once evicted.
func (p apiPod) unmanaged() bool { return len(p.Metadata.OwnerReferences) == 0 }

// podsOn lists the pods a drain moves off node.
func (a *kubeAPI) podsOn(ctx context.Context, node string) ([]apiPod, error) {
	var list struct {
		Items []apiPod `json:"items"`
	}
	if err := a.get(ctx, "/api/v1/pods?fieldSelector="+url.QueryEscape("spec.nodeName="+node), &list); err != nil {
		return nil, err
	}
	var out []apiPod
	for _, p := range list.Items {
		if p.drainKind() == "" {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id() < out[j].id() })
	return out, nil
}

// evictResult is an eviction's outcome.
type evictResult int

const (
	evicted evictResult = iota
	evictBlocked
	evictGone
)

// evict asks the API to evict a pod: the API refuses (429) while the
// eviction would break a PodDisruptionBudget, which is how a drain
// respects them.
func (a *kubeAPI) evict(ctx context.Context, p apiPod) (evictResult, string, error) {
	path := fmt.Sprintf("/api/v1/namespaces/%s/pods/%s/eviction", url.PathEscape(p.Metadata.Namespace), url.PathEscape(p.Metadata.Name))
	body := map[string]any{
		"apiVersion": "policy/v1", "kind": "Eviction",
		"metadata": map[string]any{"name": p.Metadata.Name, "namespace": p.Metadata.Namespace},
	}
	code, data, err := a.do(ctx, http.MethodPost, path, "", body)
	switch {
	case err != nil:
		return 0, "", err
	case code == http.StatusOK || code == http.StatusCreated:
		return evicted, "", nil
	case code == http.StatusNotFound:
		return evictGone, "", nil
	case code == http.StatusTooManyRequests:
		return evictBlocked, apiError(http.MethodPost, path, code, data).Error(), nil
	}
	return 0, "", apiError(http.MethodPost, path, code, data)
}

// drain cordons node and evicts its pods (DaemonSets' and static pods
// stay, as kubectl drain leaves them) until none is left or timeout. An
// eviction a PodDisruptionBudget refuses is tried again every few seconds:
// the budget allows it once the pods evicted before it run elsewhere. A
// pod nothing would recreate is refused unless force.
func (a *kubeAPI) drain(ctx context.Context, out io.Writer, node string, force bool, timeout time.Duration) error {
	if err := a.cordon(ctx, node, true); err != nil {
		return err
	}
	pods, err := a.podsOn(ctx, node)
	if err != nil {
		return err
	}
	if !force {
		var bare []string
		for _, p := range pods {
			if p.unmanaged() {
				bare = append(bare, p.id())
			}
		}
		if len(bare) > 0 {
			return fmt.Errorf("node %s runs pods no controller recreates (%s): evicting them deletes them for good; move them yourself, or give --force", node, strings.Join(bare, ", "))
		}
	}
	deadline := time.Now().Add(timeout)
	said := map[string]string{}
	for {
		if len(pods) == 0 {
			return nil
		}
		for _, p := range pods {
			if p.Metadata.DeletionTimestamp != nil {
				continue
			}
			res, why, err := a.evict(ctx, p)
			if err != nil {
				return err
			}
			if res == evicted && said[p.id()] != "evicted" {
				fmt.Fprintf(out, "  evicted %s\n", p.id())
				said[p.id()] = "evicted"
			}
			if res == evictBlocked && said[p.id()] != "blocked" {
				fmt.Fprintf(out, "  %s waits: %s\n", p.id(), why)
				said[p.id()] = "blocked"
			}
		}
		if time.Now().After(deadline) {
			var left []string
			for _, p := range pods {
				left = append(left, p.id())
			}
			return fmt.Errorf("node %s: not drained after %s: %s still there (a PodDisruptionBudget that never allows it?)", node, timeout, strings.Join(left, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(3 * time.Second):
		}
		if pods, err = a.podsOn(ctx, node); err != nil {
			return err
		}
	}
}
