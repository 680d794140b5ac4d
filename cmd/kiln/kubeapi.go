package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"kiln/configs/cluster"
	"kiln/internal/bounded"
	"kiln/pki"
	"kiln/qemu/vmcluster"
)

// kubeAPI is the few calls kiln makes to a cluster's API (the nodes, a
// drain), over plain REST with the admin's client certificate: the host CLI
// links no Kubernetes client (cmd/kiln/deps_test.go).
type kubeAPI struct {
	server string
	client *http.Client
}

// apiFor is the API of the cluster in clusterDir: through the running
// kiln cluster's endpoint when one runs in stateDir (its kubeconfig names
// the host's forward: the host has no route to the VMs), else the
// cluster directory's admin.kubeconfig.
func apiFor(clusterDir, stateDir string) (*kubeAPI, error) {
	kc := filepath.Join(clusterDir, cluster.AdminKubeconfigFile)
	if st, err := vmcluster.ReadState(stateDir); err == nil && alive(st.PID) && st.Kubeconfig != "" {
		kc = st.Kubeconfig
	}
	server, cfg, err := pki.LoadKubeconfigTLS(kc)
	if err != nil {
		return nil, fmt.Errorf("admin credentials: %w (give the cluster directory with --cluster)", err)
	}
	return &kubeAPI{server: server, client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}}, nil
}

// do sends a request; body, if not nil, is marshalled to JSON. It returns
// the status and the answer (at most 64 MiB).
func (a *kubeAPI) do(ctx context.Context, method, path, contentType string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.server+path, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		if contentType == "" {
			contentType = "application/json"
		}
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("the cluster's API (%s): %v", a.server, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, data, err
}

// get GETs path into out; a status other than 200 is an error.
func (a *kubeAPI) get(ctx context.Context, path string, out any) error {
	code, data, err := a.do(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return apiError(http.MethodGet, path, code, data)
	}
	return json.Unmarshal(data, out)
}

func apiError(method, path string, code int, data []byte) error {
	msg := strings.TrimSpace(string(data))
	var st struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &st) == nil && st.Message != "" {
		msg = st.Message
	}
	return fmt.Errorf("%s %s: %d: %s", method, path, code, bounded.Shorten(msg, 512))
}

// apiNode is what kiln reads of a Node.
type apiNode struct {
	Metadata struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Unschedulable bool `json:"unschedulable"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
		NodeInfo struct {
			BootID         string `json:"bootID"`
			KubeletVersion string `json:"kubeletVersion"`
		} `json:"nodeInfo"`
	} `json:"status"`
}

func (n apiNode) ready() bool {
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

func (a *kubeAPI) nodes(ctx context.Context) ([]apiNode, error) {
	var list struct {
		Items []apiNode `json:"items"`
	}
	err := a.get(ctx, "/api/v1/nodes", &list)
	return list.Items, err
}

func (a *kubeAPI) node(ctx context.Context, name string) (apiNode, error) {
	var n apiNode
	err := a.get(ctx, "/api/v1/nodes/"+name, &n)
	return n, err
}

// serverVersion is the API server's gitVersion (v1.37.2).
func (a *kubeAPI) serverVersion(ctx context.Context) (string, error) {
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	err := a.get(ctx, "/version", &v)
	return v.GitVersion, err
}

// cordon marks a node (un)schedulable.
func (a *kubeAPI) cordon(ctx context.Context, name string, unschedulable bool) error {
	path := "/api/v1/nodes/" + name
	patch := map[string]any{"spec": map[string]any{"unschedulable": unschedulable}}
	code, data, err := a.do(ctx, http.MethodPatch, path, "application/strategic-merge-patch+json", patch)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return apiError(http.MethodPatch, path, code, data)
	}
	return nil
}
