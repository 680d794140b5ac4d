package main

import (
	"kiln/configs/nodeapi"

	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"kiln/init/up"
)

// statusGet asks the node running on dataDir over its unix socket.
func statusGet(dataDir, path string) ([]byte, error) {
	sock := up.SocketPath(dataDir)
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("no kiln-node is running with data dir %s (no %s)", dataDir, sock)
	}
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	resp, err := client.Get("http://kiln" + path)
	if err != nil {
		return nil, fmt.Errorf("asking the node on %s: %w", sock, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", path, strings.TrimSpace(string(body)))
	}
	return body, nil
}

func statusCommand() *cobra.Command {
	var dataDir, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the state of every component of the node running on a data dir",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want table or json", output)}
			}
			body, err := statusGet(dataDir, "/status")
			if err != nil {
				return err
			}
			return nodeapi.WriteStatus(c.OutOrStdout(), body, output)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the node's data dir")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.MarkFlagRequired("data-dir")
	return cmd
}

func logsCommand() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "logs COMPONENT",
		Short: "Print the recent output of one component of the running node",
		Long: `Print the recent output of one component, from the running node's memory.
Older output is in DATA/log/COMPONENT.log (rotated by size).

On a master, "logs audit" prints the end of the API server's audit log
(DATA/log/audit.log, JSON lines).`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			body, err := statusGet(dataDir, "/logs/"+args[0])
			if err != nil {
				return err
			}
			_, err = c.OutOrStdout().Write(body)
			return err
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the node's data dir")
	cmd.MarkFlagRequired("data-dir")
	return cmd
}
