package entry

import (
	"context"

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// The Kubernetes components run upstream's own cobra commands.

func runAPIServer(args []string) int {
	return runCobra(apiserver.NewAPIServerCommand(), args)
}

func runControllerManager(args []string) int {
	return runCobra(controllermanager.NewControllerManagerCommand(), args)
}

func runScheduler(args []string) int {
	return runCobra(scheduler.NewSchedulerCommand(), args)
}

func runKubelet(args []string) int {
	return runCobra(kubelet.NewKubeletCommand(context.Background()), args)
}

func runKubeProxy(args []string) int {
	return runCobra(proxy.NewProxyCommand(), args)
}
