package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/cluster"
	"kiln/configs/nodeapi"
	"kiln/pki"
)

func statusCommand() *cobra.Command {
	var nodeAddr, clusterDir, output string
	c := &cobra.Command{
		Use:   "status --node HOST[:PORT]",
		Short: "Show a node's components: state, pid, restarts, time to ready, last exit, boot timeline",
		Long: `Show the supervisor's table of a running node, as "kiln-node status" shows it
on the node itself. The node serves it on port 10260 over TLS to clients
with a certificate of the cluster's admin group: kiln uses the one in the
cluster directory's admin.kubeconfig. (The node's own certificate is
self-signed and not checked: the node sends nothing to an unauthenticated
client, and the status holds no secret.)`,
		Example: `  kiln status --node 192.168.1.21
  kiln status --node 127.0.0.2:10260 --cluster out/cluster -o json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if nodeAddr == "" {
				return usageError{fmt.Errorf("--node is required (the node's address)")}
			}
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want table or json", output)}
			}
			body, err := nodeGet(nodeAddr, clusterDir, "/status")
			if err != nil {
				return err
			}
			if err := nodeapi.WriteStatus(c.OutOrStdout(), body, output); err != nil {
				return fmt.Errorf("node %s: %w", nodeAddr, err)
			}
			return nil
		},
	}
	c.Flags().StringVar(&nodeAddr, "node", "", "the node's address, HOST or HOST:PORT (default port 10260)")
	c.Flags().StringVar(&clusterDir, "cluster", defaultClusterDir, "cluster directory (its admin.kubeconfig authenticates kiln to the node)")
	c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return c
}

// nodeGet fetches a path of a node's status server.
func nodeGet(nodeAddr, clusterDir, path string) ([]byte, error) {
	if _, _, err := net.SplitHostPort(nodeAddr); err != nil {
		nodeAddr = net.JoinHostPort(nodeAddr, strconv.Itoa(nodeapi.Port))
	}
	kcPath := filepath.Join(clusterDir, cluster.AdminKubeconfigFile)
	data, err := os.ReadFile(kcPath)
	if err != nil {
		return nil, fmt.Errorf("admin credentials: %w (give the cluster directory with --cluster)", err)
	}
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kcPath, err)
	}
	cert, err := kc.ClientCertificate()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kcPath, err)
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert},
		// The node's certificate is self-signed, not the cluster CA's
		// (kc.TLSConfig would check that); see the command's help.
		InsecureSkipVerify: true,
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+nodeAddr+path, nil)
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("node %s: %v (is it up, and is %s the right cluster?)", nodeAddr, err, clusterDir)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("node %s: %s: %s", nodeAddr, resp.Status, body)
	}
	return body, nil
}
