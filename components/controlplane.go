package components

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strconv"

	"kiln/configs/node"
)

// ControllerManager is upstream kube-controller-manager. It signs kubelet
// certificates with the cluster CA and allocates pod CIDRs to nodes.
type ControllerManager struct{}

var _ Component = ControllerManager{}
var _ Prober = ControllerManager{}
var _ Listener = ControllerManager{}

func (ControllerManager) Name() string        { return node.ComponentControllerManager }
func (ControllerManager) Roles() []node.Role  { return []node.Role{node.RoleMaster} }
func (ControllerManager) DependsOn() []string { return []string{node.ComponentAPIServer} }
func (ControllerManager) Listens(env *Env) []string {
	return []string{hostPort(loopback, env.Config.Ports.ControllerManager)}
}

// loopback is where the controller-manager and the scheduler serve: their
// ports carry only health and metrics, which nothing off the node needs
// (CIS 1.3.7, 1.4.2; kubeadm and k3s do the same). Pods cannot reach them.
const loopback = "127.0.0.1"

// loopbackURL is https://127.0.0.1:port.
func loopbackURL(port int) string { return "https://" + hostPort(loopback, port) }

const (
	controllerManagerKubeconfig = "kubeconfig/kube-controller-manager.conf"
	controllerManagerServing    = "pki/kube-controller-manager"
)

func (c ControllerManager) Prepare(env *Env) error {
	// Where upstream made its self-signed serving certificate before
	// kiln issued one (Certs).
	if err := freshCertDir(env.Path("pki/kube-controller-manager")); err != nil {
		return err
	}
	return issueAll(env, c.Certs(env))
}

// Certs: its client certificate (its kubeconfig names the file, which
// client-go loads at each handshake) and its serving certificate (a
// watched file, as the API server's).
func (ControllerManager) Certs(env *Env) []Cert {
	return []Cert{
		clientKubeconfig(env, env.Path(controllerManagerKubeconfig), "system:kube-controller-manager", nil, "kube-controller-manager (client-go: at each handshake)"),
		loopbackServing(env, "kube-controller-manager", controllerManagerServing),
	}
}

func (ControllerManager) Flags(env *Env) map[string]string {
	kc := env.Path(controllerManagerKubeconfig)
	return map[string]string{
		"kubeconfig":                   kc,
		"authentication-kubeconfig":    kc,
		"authorization-kubeconfig":     kc,
		"bind-address":                 loopback,
		"secure-port":                  strconv.Itoa(env.Config.Ports.ControllerManager),
		"tls-cert-file":                env.Path(controllerManagerServing + ".crt"),
		"tls-private-key-file":         env.Path(controllerManagerServing + ".key"),
		"client-ca-file":               env.Path(apiCACert),
		"requestheader-client-ca-file": env.Path(frontProxyCACert),
		"root-ca-file":                 env.Path(apiCACert),
		"cluster-signing-cert-file":    env.Cluster.Paths().CACert,
		"cluster-signing-key-file":     env.Cluster.Paths().CAKey,
		// The kubelets' certificates live as long as the node's own
		// (certificates.validity), and are rotated by the kubelets.
		"cluster-signing-duration":         CertValidity(env).String(),
		"service-account-private-key-file": env.Cluster.Paths().ServiceAccountKey,
		"use-service-account-credentials":  "true",
		"controllers":                      "*,bootstrapsigner,tokencleaner",
		"allocate-node-cidrs":              "true",
		"cluster-cidr":                     env.Cluster.PodCIDR,
		"service-cluster-ip-range":         env.Cluster.ServiceCIDR,
		"cluster-name":                     env.Cluster.Name,
		"leader-elect":                     leaderElect(env),
		"profiling":                        "false",
	}
}

func (ControllerManager) Ready(ctx context.Context, env *Env) error {
	return probeSelfSigned(ctx, loopbackURL(env.Config.Ports.ControllerManager)+"/healthz")
}

// Scheduler is upstream kube-scheduler.
type Scheduler struct{}

var _ Component = Scheduler{}
var _ Prober = Scheduler{}
var _ Listener = Scheduler{}

func (Scheduler) Name() string        { return node.ComponentScheduler }
func (Scheduler) Roles() []node.Role  { return []node.Role{node.RoleMaster} }
func (Scheduler) DependsOn() []string { return []string{node.ComponentAPIServer} }
func (Scheduler) Listens(env *Env) []string {
	return []string{hostPort(loopback, env.Config.Ports.Scheduler)}
}

const (
	schedulerKubeconfig = "kubeconfig/kube-scheduler.conf"
	schedulerServing    = "pki/kube-scheduler"
)

func (s Scheduler) Prepare(env *Env) error {
	if err := freshCertDir(env.Path("pki/kube-scheduler")); err != nil {
		return err
	}
	return issueAll(env, s.Certs(env))
}

// Certs: as the controller-manager's.
func (Scheduler) Certs(env *Env) []Cert {
	return []Cert{
		clientKubeconfig(env, env.Path(schedulerKubeconfig), "system:kube-scheduler", nil, "kube-scheduler (client-go: at each handshake)"),
		loopbackServing(env, "kube-scheduler", schedulerServing),
	}
}

func (Scheduler) Flags(env *Env) map[string]string {
	kc := env.Path(schedulerKubeconfig)
	return map[string]string{
		"kubeconfig":                   kc,
		"authentication-kubeconfig":    kc,
		"authorization-kubeconfig":     kc,
		"bind-address":                 loopback,
		"secure-port":                  strconv.Itoa(env.Config.Ports.Scheduler),
		"tls-cert-file":                env.Path(schedulerServing + ".crt"),
		"tls-private-key-file":         env.Path(schedulerServing + ".key"),
		"client-ca-file":               env.Path(apiCACert),
		"requestheader-client-ca-file": env.Path(frontProxyCACert),
		"leader-elect":                 leaderElect(env),
		"profiling":                    "false",
	}
}

func (Scheduler) Ready(ctx context.Context, env *Env) error {
	return probeSelfSigned(ctx, loopbackURL(env.Config.Ports.Scheduler)+"/healthz")
}

// probeSelfSigned checks /healthz of a component on loopback without
// checking its certificate: /healthz carries no secret, and the probe
// must not fail on a certificate being renewed.
func probeSelfSigned(ctx context.Context, url string) error {
	return probeHTTPS(ctx, url, &tls.Config{InsecureSkipVerify: true}, "ok")
}

// freshCertDir removes the directory where the component made its own
// self-signed serving certificate at start under an older kiln (kiln
// issues it now: Certs), so no stale key is left on the node.
func freshCertDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clearing %s: %w", dir, err)
	}
	return nil
}

// leaderElect: with several masters one controller-manager and one
// scheduler act at a time, elected through a Lease. One master has no one
// to elect, and electing would delay its restart by the lease duration.
func leaderElect(env *Env) string {
	return strconv.FormatBool(len(env.Config.ControlPlane.Masters) > 1)
}
