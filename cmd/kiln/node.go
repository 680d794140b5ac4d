package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/nodeapi"
	"kiln/internal/bounded"
	"kiln/internal/nodeclient"
)

func statusCommand() *cobra.Command {
	var f nodeFlags
	var output string
	c := &cobra.Command{
		Use:   "status --node NODE",
		Short: "Show a node's components: state, pid, restarts, time to ready, last exit, boot timeline",
		Long: `Show the supervisor's table of a running node, as "kiln-node status" shows it
on the node itself.
` + nodeHelp,
		Example: `  kiln status --node kiln-worker-1
  kiln status --node 192.168.1.21
  kiln status --node 127.0.0.2:10260 --cluster out/cluster -o json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o %s: want table or json", bounded.Quote(output))}
			}
			t, err := f.target()
			if err != nil {
				return err
			}
			body, err := nodeGetFrom(t, f.clusterDir, "/status")
			if err != nil {
				return err
			}
			if err := nodeapi.WriteStatus(c.OutOrStdout(), body, output); err != nil {
				return fmt.Errorf("node %s: %w", t, err)
			}
			return nil
		},
	}
	f.register(c)
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

// nodeGet fetches a path of the node API at hostPort (checked by
// nodeHostPort), at most maxStatusBytes of it.
func nodeGet(hostPort, clusterDir, path string) ([]byte, error) {
	return nodeGetFrom(directTarget(hostPort), clusterDir, path)
}

// nodeGetFrom fetches a path of t's node API, at most maxStatusBytes of
// it.
func nodeGetFrom(t nodeclient.Target, clusterDir, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp, err := nodeSendTo(ctx, t, clusterDir, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBytes+1))
	if err != nil {
		return nil, fmt.Errorf("node %s: reading the answer: %w", t, err)
	}
	if len(body) > maxStatusBytes {
		return nil, fmt.Errorf("node %s: the answer is larger than %s, more than a node's status can be (not read further)", t, bounded.Size(maxStatusBytes))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("node %s: %s: %s", t, resp.Status, bounded.Shorten(strings.TrimSpace(string(body)), 512))
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
	return nodeSendTo(ctx, directTarget(hostPort), clusterDir, method, path, body, header)
}

// nodeSendTo sends a request to t's node API with the cluster's admin
// credentials, checking the node's serving certificate against the
// cluster CA (nodeclient). The caller reads and closes the body,
// whatever the status.
func nodeSendTo(ctx context.Context, t nodeclient.Target, clusterDir, method, path string, body io.Reader, header http.Header) (*http.Response, error) {
	client, err := nodeclient.FromClusterDir(clusterDir)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(ctx, t, method, path, body, header)
	if errors.Is(err, nodeclient.ErrNotVerified) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%v (is it up, and is %s the right cluster?)", err, clusterDir)
	}
	return resp, nil
}

// directTarget is the node API at hostPort (checked by nodeHostPort):
// its serving certificate must be issued for the host dialled, unless
// that is loopback (a forward, such as kiln cluster's), where any node's
// certificate of the cluster CA will do.
func directTarget(hostPort string) nodeclient.Target {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		host = hostPort
	}
	name := host
	if ip, err := netip.ParseAddr(host); (err == nil && ip.IsLoopback()) || host == "localhost" {
		name = ""
	}
	return nodeclient.Target{Addr: hostPort, Name: name}
}
