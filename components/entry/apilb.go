package entry

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"kiln/components/apilb"
)

// runAPILB is a worker's node-local API load balancer (components/apilb):
// the worker's components reach the API at --listen, and it passes each
// connection on to a master's API server that answers.
func runAPILB(args []string) int {
	fs := flag.NewFlagSet("api-lb", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:6444", "address the node's components reach the API at")
	seeds := fs.String("seeds", "", "the masters' API servers to start from, HOST:PORT,...")
	kubeconfig := fs.String("kubeconfig", "", "the node's kubeconfig, to learn the masters from the cluster with (written by the join)")
	clientCert := fs.String("client-cert", "", "PEM file with the node's current client certificate and key, preferred over the kubeconfig's")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var list []string
	for _, s := range strings.Split(*seeds, ",") {
		if s = strings.TrimSpace(s); s != "" {
			list = append(list, s)
		}
	}
	lb, err := apilb.Listen(apilb.Options{
		Listen: *listen, Seeds: list, Kubeconfig: *kubeconfig, ClientCert: *clientCert,
		CheckTLS: true, Log: os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := lb.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
