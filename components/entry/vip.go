package entry

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"kiln/components/vip"
)

// runVIP keeps the API's virtual IP on one master at a time
// (components/vip): it competes for the Lease kube-system/kiln-vip
// through this master's API server while that server is ready, holds the
// address while it holds the Lease, and takes it off when it stops.
func runVIP(args []string) int {
	fs := flag.NewFlagSet("vip", flag.ContinueOnError)
	address := fs.String("vip", "", "the virtual IP (IPv4)")
	nodeIP := fs.String("node-ip", "", "this node's address: the VIP goes on the interface that carries it")
	identity := fs.String("identity", "", "this master's name in the Lease")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for this master's own API server")
	lease := fs.Duration("lease-duration", 10*time.Second, "how long a holder that stops renewing keeps the Lease: the takeover time when a master dies")
	renew := fs.Duration("renew-deadline", 7*time.Second, "how long the holder keeps trying to renew before it gives the VIP up")
	retry := fs.Duration("retry-period", time.Second, "between two tries to take or renew the Lease")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	a, err := netip.ParseAddr(*address)
	if err != nil {
		return usageError("vip", fmt.Errorf("--vip %q: %v", *address, err))
	}
	self, _ := netip.ParseAddr(*nodeIP) // none: any interface on the VIP's network
	link, err := vip.NewLink(a, self)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vip: %v\n", err)
		return 1
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return usageError("vip", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return usageError("vip", err)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	err = vip.Run(ctx, vip.Options{
		Identity: *identity, Client: cs, Address: link,
		Ready: func(ctx context.Context) error {
			// Anonymous access to /readyz is allowed; the client's own
			// certificate does no harm.
			body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			if err != nil {
				return err
			}
			if s := strings.TrimSpace(string(body)); s != "ok" {
				return fmt.Errorf("/readyz: %q", s)
			}
			return nil
		},
		LeaseDuration: *lease, RenewDeadline: *renew, RetryPeriod: *retry,
		Log: os.Stderr,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "vip: %v\n", err)
		return 1
	}
	return 0
}
