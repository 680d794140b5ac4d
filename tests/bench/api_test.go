//go:build bench

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"kiln/pki"
)

// apiClient reads the API server with the admin kubeconfig's client
// certificate: one HTTP connection, instead of a kubectl process a second
// on a machine whose two cores run the VMs.
type apiClient struct {
	server string
	http   *http.Client
}

func newAPIClient(kubeconfig string) (*apiClient, error) {
	server, cfg, err := pki.LoadKubeconfigTLS(kubeconfig)
	if err != nil {
		return nil, err
	}
	return &apiClient{server: server, http: &http.Client{Timeout: 20 * time.Second,
		Transport: &http.Transport{TLSClientConfig: cfg}}}, nil
}

// get fetches a path; the error holds the status and the start of the body.
func (a *apiClient) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.server+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", path, resp.Status, shorten(string(body), 200))
	}
	return body, nil
}

func (a *apiClient) getJSON(ctx context.Context, path string, v any) error {
	body, err := a.get(ctx, path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

type apiNodeList struct {
	Items []struct {
		Metadata struct {
			Name              string    `json:"name"`
			CreationTimestamp time.Time `json:"creationTimestamp"`
		} `json:"metadata"`
		Status struct {
			Conditions []struct {
				Type               string    `json:"type"`
				Status             string    `json:"status"`
				LastTransitionTime time.Time `json:"lastTransitionTime"`
			} `json:"conditions"`
		} `json:"status"`
	} `json:"items"`
}

type apiPodList struct {
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			NodeName string `json:"nodeName"`
		} `json:"spec"`
		Status struct {
			Phase             string `json:"phase"`
			ContainerStatuses []struct {
				State struct {
					Running *struct {
						StartedAt time.Time `json:"startedAt"`
					} `json:"running"`
				} `json:"state"`
			} `json:"containerStatuses"`
		} `json:"status"`
	} `json:"items"`
}

// apiEvent is when something happened according to the API (a time stamp
// an object carries, written by a guest's clock) and when the host first
// saw it.
type apiEvent struct {
	Stamp time.Time // zero: the object carries none
	Seen  time.Time
	Note  string
}

// watcher polls the API every second and keeps the first time it saw each
// event: the API's /readyz, each node registered and Ready, CoreDNS
// running.
type watcher struct {
	api    *apiClient
	mu     sync.Mutex
	events map[string]apiEvent
}

const (
	evReadyz  = "readyz"
	evCoreDNS = "coredns"
)

func evRegistered(node string) string { return "registered/" + node }
func evReady(node string) string      { return "ready/" + node }

func newWatcher(api *apiClient) *watcher {
	return &watcher{api: api, events: map[string]apiEvent{}}
}

func (w *watcher) get(key string) (apiEvent, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.events[key]
	return e, ok
}

func (w *watcher) see(key string, e apiEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.events[key]; !ok {
		w.events[key] = e
	}
}

// run polls until ctx ends.
func (w *watcher) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		w.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *watcher) poll(ctx context.Context) {
	if _, ok := w.get(evReadyz); !ok {
		if body, err := w.api.get(ctx, "/readyz"); err == nil && string(body) == "ok" {
			w.see(evReadyz, apiEvent{Seen: time.Now()})
		} else {
			return // nothing else answers before it
		}
	}
	var nodes apiNodeList
	if err := w.api.getJSON(ctx, "/api/v1/nodes", &nodes); err == nil {
		now := time.Now()
		for _, n := range nodes.Items {
			w.see(evRegistered(n.Metadata.Name), apiEvent{Stamp: n.Metadata.CreationTimestamp, Seen: now})
			for _, c := range n.Status.Conditions {
				if c.Type == "Ready" && c.Status == "True" {
					w.see(evReady(n.Metadata.Name), apiEvent{Stamp: c.LastTransitionTime, Seen: now})
				}
			}
		}
	}
	if _, ok := w.get(evCoreDNS); !ok {
		var pods apiPodList
		q := url.Values{"labelSelector": {"k8s-app=kube-dns"}}
		if err := w.api.getJSON(ctx, "/api/v1/namespaces/kube-system/pods?"+q.Encode(), &pods); err == nil {
			for _, p := range pods.Items {
				if p.Status.Phase != "Running" {
					continue
				}
				e := apiEvent{Seen: time.Now(), Note: p.Metadata.Name + " on " + p.Spec.NodeName}
				for _, c := range p.Status.ContainerStatuses {
					if c.State.Running != nil {
						e.Stamp = c.State.Running.StartedAt
					}
				}
				w.see(evCoreDNS, e)
				break
			}
		}
	}
}

// waitEvent waits until the watcher has seen an event.
func (w *watcher) waitEvent(ctx context.Context, key string, timeout time.Duration) (apiEvent, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if e, ok := w.get(key); ok {
			return e, nil
		}
		select {
		case <-ctx.Done():
			return apiEvent{}, fmt.Errorf("%s not seen within %s", key, timeout)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// apiRows are a node's timeline rows from the API, relative to its QEMU
// start. A stamp is written by a guest's clock (set from QEMU's RTC at boot,
// to the second): it is shown when it is not later than the host saw it
// nor before QEMU started, the host's first sight always.
func apiRows(start time.Time, e apiEvent, what, stampFrom string) []timelineRow {
	var rows []timelineRow
	if !e.Stamp.IsZero() {
		at := e.Stamp.Sub(start)
		switch {
		case at < 0 || e.Stamp.After(e.Seen.Add(2*time.Second)):
			rows = append(rows, timelineRow{-1, -1, fmt.Sprintf("%s (%s %s: off the host's clock, not placed)", what, stampFrom, e.Stamp.Format(time.RFC3339)), "API"})
		default:
			rows = append(rows, timelineRow{at, -1, what + " (" + stampFrom + ")", "API, guest clock, 1 s"})
		}
	}
	w := what + " (seen by the host)"
	if e.Note != "" {
		w = what + ": " + e.Note + " (seen by the host)"
	}
	rows = append(rows, timelineRow{e.Seen.Sub(start), -1, w, "API poll, 1 s"})
	return rows
}
