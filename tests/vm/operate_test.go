//go:build vm

package vm

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/bounded"
	"kiln/internal/testutil/e2e"
	"kiln/qemu/vmcluster"
)

// checkNodeOperations runs kiln's node commands against the cluster's
// nodes by name, as a user of make cluster does (the cluster's state
// directory says how to reach them: a master through its node API's
// forward, the worker, which the host has no route to, through the
// master's relay), and checks that a client without the cluster's admin
// certificate gets nothing.
func checkNodeOperations(t *testing.T, c *vmcluster.Cluster, clusterDir, stateDir string) {
	node := func(args ...string) (string, error) {
		return e2e.Kiln(append(args, "--cluster", clusterDir, "--state", stateDir)...)
	}
	for _, name := range []string{vmcluster.MasterName, "kiln-worker-1"} {
		out, err := node("status", "--node", name, "-o", "json")
		if err != nil {
			t.Errorf("kiln status --node %s: %v\n%s", name, err, out)
			continue
		}
		var st nodeapi.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Services) == 0 || st.Image == nil {
			t.Errorf("kiln status --node %s: %v\n%s", name, err, out)
		}
	}
	out, err := node("logs", "--node", "kiln-worker-1", "kubelet", "--tail", "5")
	if err != nil || strings.Count(strings.TrimSpace(out), "\n") > 4 || out == "" {
		t.Errorf("kiln logs --node kiln-worker-1 kubelet --tail 5: %v\n%s", err, out)
	}
	out, err = node("dmesg", "--node", "kiln-worker-1")
	if err != nil || !strings.Contains(out, "Linux version") {
		t.Errorf("kiln dmesg --node kiln-worker-1: %v\n%s", err, bounded.Shorten(out, 2000))
	}
	if out, err := node("status", "--node", "kiln-worker-9"); err == nil {
		t.Errorf("kiln status --node of a node that does not exist: %s", out)
	}

	// Without a client certificate: the master's node API, through its
	// forward, answers nothing but the refusal.
	port := c.Node(vmcluster.MasterName).NodeAPIPort
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d%s", port, nodeapi.PathStatus))
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("the node API without a client certificate: %s", resp.Status)
		}
	}
}
