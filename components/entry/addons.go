package entry

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"kiln/components/addons"
	"kiln/images/oci"
)

// runAddons applies the cluster's own objects (components/addons), then
// labels the master's node as the control plane once it has registered
// (the kubelet may not set node-role labels on itself).
func runAddons(args []string) int {
	fs := flag.NewFlagSet("addons", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig with cluster-admin rights")
	tokenFile := fs.String("token-file", "", "file holding the bootstrap token")
	clusterDNS := fs.String("cluster-dns", "", "IP of the kube-dns Service")
	clusterDomain := fs.String("cluster-domain", "cluster.local", "cluster DNS domain")
	masterNode := fs.String("master-node", "", "the master's node name to label as control plane (empty: none)")
	masterName := fs.String("master-name", "", "the master's name, never granted to a joining node")
	caFile := fs.String("ca-file", "", "the cluster CA's certificate (the APIServices' caBundle)")
	metricsPort := fs.Int("metrics-server-port", 10262, "port of the masters' metrics-server on loopback")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	tok, err := os.ReadFile(*tokenFile)
	if err != nil {
		return usageError("addons", err)
	}
	id, secret, _ := strings.Cut(strings.TrimSpace(string(tok)), ".")
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		return usageError("addons", err)
	}
	objs, err := addons.Render(addons.Values{
		TokenID: id, TokenSecret: secret,
		ClusterDNS: *clusterDNS, ClusterDomain: *clusterDomain,
		CoreDNSImage: oci.CoreDNSRef, MasterName: *masterName,
		CABundle: string(caPEM), MetricsServerPort: *metricsPort,
	})
	if err != nil {
		return usageError("addons", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return usageError("addons", err)
	}
	cfg.Timeout = 30 * time.Second // each request: a stalled one is retried, not waited for
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return usageError("addons", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// What a worker's join waits for goes in first, alone: workers that
	// boot with their master are refused until it is in place, and nothing
	// else in the add-ons is worth making them wait for.
	joinObjs, rest := addons.JoinFirst(objs)
	start := time.Now()
	if err := addons.ApplyRetrying(ctx, dyn, addons.FieldManager(*masterName), joinObjs, addons.Retry{For: addonsRetry, Out: os.Stderr}); err != nil {
		fmt.Fprintf(os.Stderr, "addons: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "addons: workers may join: bootstrap token %s, join RBAC and node identities applied (%d objects, %.1fs)\n", id, len(joinObjs), time.Since(start).Seconds())
	if err := addons.ApplyRetrying(ctx, dyn, addons.FieldManager(*masterName), rest, addons.Retry{For: addonsRetry, Out: os.Stderr}); err != nil {
		fmt.Fprintf(os.Stderr, "addons: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "addons: applied %d objects (bootstrap token %s, join RBAC, node identities, CoreDNS)\n", len(objs), id)
	if *masterNode == "" {
		return 0
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return usageError("addons", err)
	}
	patch := []byte(`{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`)
	for {
		_, err := cs.CoreV1().Nodes().Patch(ctx, *masterNode, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "kiln"})
		if err == nil {
			fmt.Fprintf(os.Stderr, "addons: node %s labelled control-plane\n", *masterNode)
			return 0
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(os.Stderr, "addons: node %s not labelled (it did not register): %v\n", *masterNode, err)
			return 0
		case <-time.After(2 * time.Second):
		}
	}
}

// addonsRetry is how long the addons task retries an apply that failed
// for a reason that passes by itself (addons.Transient), such as the API
// server having just started, before it gives up and the supervisor
// starts it again.
const addonsRetry = 2 * time.Minute
