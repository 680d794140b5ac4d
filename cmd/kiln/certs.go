package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/nodeapi"
)

func certsCommand() *cobra.Command {
	var f nodeFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "certs --node NODE [--json]",
		Short: "List a node's certificates: when each expires, when it is renewed, and by whom",
		Long: `List every certificate a node uses: those the node issues and renews
itself (a master's: its components' serving and client certificates, from
the cluster's CAs), those its kubelet rotates through the cluster's
certificate API (its client certificate, a worker's serving certificate),
and the CAs, which nothing renews (README, Certificates). A certificate
is renewed once two thirds of its lifetime (the node config's
certificates.validity) have passed, without a restart.
` + nodeHelp,
		Example: `  kiln certs --node kiln-master
  kiln certs --node kiln-worker-1 --json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			t, err := f.target()
			if err != nil {
				return err
			}
			body, err := nodeGetFrom(t, f.clusterDir, nodeapi.PathCerts)
			if err != nil {
				return err
			}
			var certs nodeapi.Certs
			if err := json.Unmarshal(body, &certs); err != nil {
				return fmt.Errorf("node %s: its certificates: %v", t, err)
			}
			if asJSON {
				enc := json.NewEncoder(c.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(certs)
			}
			return nodeapi.WriteCertsTable(c.OutOrStdout(), certs, time.Now())
		},
	}
	f.register(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print the node's answer as JSON (every field: issuer, validity start, readers)")
	return c
}
