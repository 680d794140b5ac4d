package entry

import (
	"context"
	"flag"
	"fmt"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"kiln/components/localstorage"
	"kiln/configs/nodeapi"
)

// runLocalStorage provisions the volumes of the StorageClass "local"
// (components/localstorage) with the library's controller: every master
// runs it, the holder of the Lease kube-system/kiln.dev-local provisions
// and deletes. A holder that loses the Lease exits (the library's choice)
// and the supervisor starts it again as a candidate; SIGTERM ends it at
// once, and another master takes over when the Lease expires (15 s).
func runLocalStorage(args []string) int {
	fs := flag.NewFlagSet("local-storage", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the provisioner's user, whose client certificate also reaches the nodes' API")
	volumesDir := fs.String("volumes-dir", "", "where every node keeps its volumes (DATA/volumes)")
	port := fs.Int("node-api-port", nodeapi.Port, "the nodes' API port")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *volumesDir == "" {
		return usageError("local-storage", fmt.Errorf("--volumes-dir is required"))
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return usageError("local-storage", err)
	}
	cfg.UserAgent = "kiln-local-storage"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return usageError("local-storage", err)
	}
	// The kubeconfig names its certificate's file (components.Cert),
	// which client-go and the node API client both read again at each
	// handshake.
	nodes, err := localstorage.NewNodeAPI(cfg.CAData, cfg.CertFile, cfg.KeyFile, *port)
	if err != nil {
		return usageError("local-storage", fmt.Errorf("%s: %w", *kubeconfig, err))
	}
	p := &localstorage.Provisioner{Client: cs, VolumesDir: *volumesDir, Nodes: nodes}
	ctx := context.Background()
	pc := controller.NewProvisionController(ctx, cs, localstorage.ProvisionerName, p,
		controller.LeaderElection(true),
		controller.LeaderElectionNamespace(metav1.NamespaceSystem),
		// One claim or volume at a time is plenty for a small cluster,
		// and keeps the provisioner's memory small.
		controller.Threadiness(1),
	)
	fmt.Fprintf(os.Stderr, "local-storage: provisioner %s, volumes in %s on each node\n", localstorage.ProvisionerName, *volumesDir)
	pc.Run(ctx) // returns only when the Lease is lost, by exiting
	return 1
}
