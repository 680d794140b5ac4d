package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/node"
	"kiln/init/up"
)

func upCommand() *cobra.Command {
	var (
		role, clusterDir, dataDir, configPath, address, hostname string
		apiPort                                                  int
		quiet, runPods                                           bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run this host as a node: the role's components under the supervisor",
		Long: `Run the role's Kubernetes components as supervised processes on this host,
with the cluster's certificates. Stops every component in reverse order on
SIGTERM or Ctrl-C. Starting again on the same --data-dir keeps the cluster's
state.

The node config (--config) is the same YAML a kiln image reads; flags given
here override it. Component output goes to DATA/log/NAME.log and, prefixed
with the component's name, to standard output.

On a host a master runs the control plane only, unless --run-pods is given:
the worker stack (containerd, kubelet, kube-proxy, the pod network) changes
the host's network and cgroups, and expects the programs a kiln image
carries (runc, the CNI plugins) in their places.`,
		Example: `  kiln gen cluster --out out/cluster
  kiln-node up --role master --cluster out/cluster --data-dir /tmp/kiln
  kubectl --kubeconfig out/cluster/admin.kubeconfig get --raw /readyz`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			started := time.Now()
			cfg := node.Default()
			if configPath != "" {
				var err error
				if cfg, err = node.Load(configPath); err != nil {
					return err
				}
			}
			flags := c.Flags()
			if flags.Changed("role") {
				cfg.Role = node.Role(role)
			}
			if flags.Changed("address") {
				cfg.Address = address
			}
			if flags.Changed("api-port") {
				cfg.Ports.APIServer = apiPort
			}
			if flags.Changed("hostname") {
				cfg.Hostname = hostname
			}
			cfg.RunPods = runPods
			if clusterDir == "" {
				return usageError{fmt.Errorf("--cluster is required (create one with: kiln gen cluster --out DIR)")}
			}
			if dataDir == "" {
				return usageError{fmt.Errorf("--data-dir is required (where etcd's data, certificates and logs go)")}
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return up.Run(ctx, up.Options{
				Config: cfg, ClusterDir: clusterDir, DataDir: dataDir, Self: self,
				Console: c.OutOrStdout(), Quiet: quiet, Started: started,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&role, "role", "master", "node role: master or worker")
	f.StringVar(&clusterDir, "cluster", "", "cluster directory written by 'kiln gen cluster' (required)")
	f.StringVar(&dataDir, "data-dir", "", "directory for state, certificates and logs (required)")
	f.StringVar(&configPath, "config", "", "node config file (YAML, kind NodeConfig)")
	f.StringVar(&address, "address", "127.0.0.1", "IP address the components bind to and advertise")
	f.StringVar(&hostname, "hostname", "", "node name (default: this host's name)")
	f.IntVar(&apiPort, "api-port", 6443, "kube-apiserver's secure port")
	f.BoolVar(&runPods, "run-pods", false, "also run the worker stack on a master (see above)")
	f.BoolVarP(&quiet, "quiet", "q", false, "keep component output off the terminal (it still goes to the log files)")
	return cmd
}
