package entry

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

// runNetworkPolicy runs upstream kube-network-policies' controller the way
// its cmd/main.go does (informers for network policies, namespaces and
// pods; networkpolicy.NewController; Run), with kiln's differences: the
// node's kubeconfig instead of in-cluster credentials, SIGTERM handled,
// admin network policies off (alpha; their CRDs are not installed),
// /metrics and a /healthz (ok once the informers have synced) on loopback
// only, and an exit status when the controller stops with an error (the
// supervisor restarts it) instead of carrying on without enforcing.
func runNetworkPolicy(args []string) int {
	fs := flag.NewFlagSet("network-policy", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the node")
	nodeName := fs.String("hostname-override", "", "this node's Kubernetes name")
	bind := fs.String("bind-address", "127.0.0.1:9080", "address of /healthz and /metrics")
	queueID := fs.Int("nfqueue-id", 100, "number of the nfqueue the first packets of connections go to")
	failOpen := fs.Bool("fail-open", false, "let packets through while the controller is not running (default: drop them)")
	bug1766 := fs.Bool("netfilter-bug-1766-fix", true, "judge DNS packets after DNAT, in prerouting (a conntrack race fixed in kernel 6.12)")
	logCfg := logsapi.NewLoggingConfiguration()
	logsapi.AddGoFlags(logCfg, fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *kubeconfig == "" || *nodeName == "" {
		return usageError("network-policy", fmt.Errorf("--kubeconfig and --hostname-override are required"))
	}
	logs.InitLogs()
	defer logs.FlushLogs()
	if err := logsapi.ValidateAndApply(logCfg, nil); err != nil {
		return usageError("network-policy", err)
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return usageError("network-policy", err)
	}
	// Protobuf, as upstream: pods are many.
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return usageError("network-policy", err)
	}
	ln, err := net.Listen("tcp", *bind)
	if err != nil {
		fmt.Fprintf(os.Stderr, "network-policy: %v\n", err)
		return 1
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	factory := informers.NewSharedInformerFactory(cs, 0)
	ctrl, err := networkpolicy.NewController(cs,
		factory.Networking().V1().NetworkPolicies(),
		factory.Core().V1().Namespaces(),
		factory.Core().V1().Pods(),
		nil, nil, nil, nil, // nodes and the admin network policy API: only for admin network policies
		networkpolicy.Config{
			FailOpen:            *failOpen,
			QueueID:             *queueID,
			NodeName:            *nodeName,
			NetfilterBug1766Fix: *bug1766,
		})
	if err != nil {
		fmt.Fprintf(os.Stderr, "network-policy: %v\n", err)
		return 1
	}

	var synced atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !synced.Load() {
			http.Error(w, "informers not synced", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "network-policy: %s: %v\n", *bind, err)
		}
	}()
	defer srv.Close()

	runErr := make(chan error, 1)
	go func() { runErr <- ctrl.Run(ctx) }()
	factory.Start(ctx.Done())
	go func() {
		for _, ok := range factory.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return
			}
		}
		synced.Store(true)
	}()

	select {
	case err := <-runErr:
		if ctx.Err() != nil {
			break // stopped
		}
		// Run returns early only when it could not start (informers, the
		// nfqueue socket): its table is already removed.
		if err == nil {
			err = errors.New("stopped")
		}
		fmt.Fprintf(os.Stderr, "network-policy: controller: %v\n", err)
		return 1
	case <-ctx.Done():
		// Run removes its nftables table on the way out: wait for it.
		select {
		case <-runErr:
		case <-time.After(10 * time.Second):
			fmt.Fprintln(os.Stderr, "network-policy: controller did not stop in 10s")
		}
	}
	factory.Shutdown()
	return 0
}
