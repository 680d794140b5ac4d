package entry

import (
	"context"

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func init() {
	register("kube-apiserver", func(args []string) int {
		return runCobra(apiserver.NewAPIServerCommand(), args)
	})
	register("kube-controller-manager", func(args []string) int {
		return runCobra(controllermanager.NewControllerManagerCommand(), args)
	})
	register("kube-scheduler", func(args []string) int {
		return runCobra(scheduler.NewSchedulerCommand(), args)
	})
	register("kubelet", func(args []string) int {
		return runCobra(kubelet.NewKubeletCommand(context.Background()), args)
	})
	register("kube-proxy", func(args []string) int {
		return runCobra(proxy.NewProxyCommand(), args)
	})
}
