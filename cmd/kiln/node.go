package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/cluster"
	"kiln/configs/nodeapi"
	"kiln/internal/bounded"
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
				return usageError{fmt.Errorf("-o %s: want table or json", bounded.Quote(output))}
			}
			hostPort, err := nodeHostPort(nodeAddr)
			if err != nil {
				return usageError{err}
			}
			body, err := nodeGet(hostPort, clusterDir, "/status")
			if err != nil {
				return err
			}
			if err := nodeapi.WriteStatus(c.OutOrStdout(), body, output); err != nil {
				return fmt.Errorf("node %s: %w", hostPort, err)
			}
			return nil
		},
	}
	c.Flags().StringVar(&nodeAddr, "node", "", "the node's address, HOST or HOST:PORT (default port 10260)")
	c.Flags().StringVar(&clusterDir, "cluster", defaultClusterDir, "cluster directory (its admin.kubeconfig authenticates kiln to the node)")
	c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return c
}

// dnsName is a host name: dot-separated labels of letters, digits and '-'.
var dnsName = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?$`)

// zoneName is an IPv6 zone kiln takes: none, or an interface name.
var zoneName = regexp.MustCompile(`^[-A-Za-z0-9_.]{0,15}$`)

// nodeHostPort checks --node, HOST or HOST:PORT (HOST an IP address,
// "[IPv6]", or a DNS name), and returns HOST:PORT, with nodeapi.Port when
// none is given.
func nodeHostPort(addr string) (string, error) {
	bad := func(why string) error {
		return fmt.Errorf("--node %s: %s; want HOST or HOST:PORT, HOST an IP address or a DNS name (e.g. 192.168.1.21, [fd00::21]:10260, node-1)", bounded.Quote(addr), why)
	}
	if strings.Contains(addr, "://") {
		return "", bad("a URL, not an address")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// No port: the whole is the host ("[::1]" and "::1" both).
		host, port = addr, strconv.Itoa(nodeapi.Port)
		if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
			host = host[1 : len(host)-1]
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
		return "", bad("the port is not a number from 1 to 65535")
	}
	switch ip, err := netip.ParseAddr(host); {
	case host == "":
		return "", bad("no host")
	case err == nil && !zoneName.MatchString(ip.Zone()):
		return "", bad("the IPv6 zone is not an interface name")
	case err == nil:
		host = ip.String()
	case len(host) > 253 || !dnsName.MatchString(host):
		return "", bad("the host is neither an IP address nor a DNS name")
	}
	return net.JoinHostPort(host, port), nil
}

// maxStatusBytes caps a node's answer: a status (the capped timeline, every
// component) is well under it, so more is a broken or hostile server, not
// a status to read into memory whole.
const maxStatusBytes = 8 << 20

// nodeGet fetches a path of the status server at hostPort (checked by
// nodeHostPort), at most maxStatusBytes of it.
func nodeGet(hostPort, clusterDir, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp, err := nodeDo(ctx, hostPort, clusterDir, http.MethodGet, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBytes+1))
	if err != nil {
		return nil, fmt.Errorf("node %s: reading the answer: %w", hostPort, err)
	}
	if len(body) > maxStatusBytes {
		return nil, fmt.Errorf("node %s: the answer is larger than %s, more than a node's status can be (not read further)", hostPort, bounded.Size(maxStatusBytes))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("node %s: %s: %s", hostPort, resp.Status, bounded.Shorten(strings.TrimSpace(string(body)), 512))
	}
	return body, nil
}

// nodeDo sends a request to the node API at hostPort with the cluster's
// admin credentials. The caller reads and closes the body, whatever the
// status.
func nodeDo(ctx context.Context, hostPort, clusterDir, method, path string) (*http.Response, error) {
	return nodeSend(ctx, hostPort, clusterDir, method, path, nil, nil)
}

// nodeSend is nodeDo with a request body and headers (nil: none).
func nodeSend(ctx context.Context, hostPort, clusterDir, method, path string, body io.Reader, header http.Header) (*http.Response, error) {
	kcPath := filepath.Join(clusterDir, cluster.AdminKubeconfigFile)
	data, err := pki.ReadFile(kcPath)
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
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert},
		// The node's certificate is self-signed, not the cluster CA's
		// (kc.TLSConfig would check that); see kiln status --help.
		InsecureSkipVerify: true,
	}}}
	// url.URL escapes what a host may hold that a URL may not (an IPv6
	// zone's '%').
	u := &url.URL{Scheme: "https", Host: hostPort, Path: path}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", hostPort, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("node %s: %v (is it up, and is %s the right cluster?)", hostPort, err, clusterDir)
	}
	return resp, nil
}
