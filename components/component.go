// Package components describes each Kubernetes component kiln runs: its name,
// the roles it runs in, what it depends on, the files it needs, its
// arguments built from the node config, and how its readiness is checked.
//
// A description is data for the supervisor; the code that runs the component
// is upstream's, reached through the node binary's "component NAME"
// sub-command (see components/entry). This package does not link the
// Kubernetes server code.
package components

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"kiln/configs/cluster"
	"kiln/configs/node"
)

// Env is everything a component needs to describe itself on one node.
type Env struct {
	Config   node.Config
	Cluster  *cluster.Cluster
	NodeName string
	DataDir  string
	// Memory is the machine's memory (zero when unknown: then every
	// memory setting is upstream's default); see memory.go.
	Memory NodeMemory
}

// Warn tells the operator something Prepare chose for them that weakens
// the node (PID 1's standard error is the console).
func (e *Env) Warn(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kiln: WARNING: "+format+"\n", args...)
}

// Path returns a path under the node's data directory.
func (e *Env) Path(parts ...string) string {
	return filepath.Join(append([]string{e.DataDir}, parts...)...)
}

// URL is https://address:port on this node.
func (e *Env) URL(port int) string {
	return fmt.Sprintf("https://%s", hostPort(e.Config.Address, port))
}

// Component is one supervised process.
type Component interface {
	Name() string
	Roles() []node.Role
	DependsOn() []string
	// Prepare writes what the component reads at start: certificates,
	// kubeconfigs, config files. It runs before every start of the node.
	Prepare(env *Env) error
	// Flags are the component's default flags (name without dashes →
	// value); the node config's extraArgs are merged over them.
	Flags(env *Env) map[string]string
}

// Prober is implemented by components whose readiness can be checked.
type Prober interface {
	Ready(ctx context.Context, env *Env) error
}

// Listener is implemented by components that bind TCP addresses; they are
// checked to be free before anything starts.
type Listener interface {
	Listens(env *Env) []string
}

// Conditional is implemented by components a role runs only when the node
// config asks for them (the worker stack on a master).
type Conditional interface {
	Enabled(cfg *node.Config) bool
}

// Task is implemented by components that run to completion (importing
// images, joining, applying the cluster add-ons) instead of serving: the
// supervisor counts them done when they exit 0 and retries them otherwise.
type Task interface {
	Task()
}

// ChildKeeper is implemented by components whose children must outlive a
// restart of the component itself (containerd's shims hold the pods).
type ChildKeeper interface {
	KeepChildren()
}

// All lists every component, in start order; the slice is the caller's. A
// dependency on a component the node does not run (join, on a master) is
// ignored.
func All() []Component {
	return []Component{
		Firewall{},
		Etcd{},
		APIServer{},
		ControllerManager{},
		Scheduler{},
		Addons{},
		CSRApprover{},
		MetricsServer{},
		LocalStorage{},
		VIP{},
		APILB{},
		Join{},
		Containerd{},
		ImportImages{},
		Kubelet{},
		PodNetwork{},
		KubeProxy{},
		NetworkPolicy{},
	}
}

// ForRole returns the components a role runs by default, in start order.
func ForRole(role node.Role) []Component {
	cfg := node.Default()
	cfg.Role = role
	return For(&cfg)
}

// For returns the components a node runs, in start order.
func For(cfg *node.Config) []Component {
	var out []Component
	for _, c := range All() {
		if cond, ok := c.(Conditional); ok && !cond.Enabled(cfg) {
			continue
		}
		for _, r := range c.Roles() {
			if r == cfg.Role {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

// Args is the component's full argv (after "component NAME"), defaults with
// the node config's overrides merged in, sorted.
func Args(c Component, env *Env) (argv, overridden []string) {
	return env.Config.Args(c.Name(), c.Flags(env))
}
