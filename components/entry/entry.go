// Package entry holds the entry points that run upstream code: one function
// per component, each called in its own child process by the node binary's
// "component NAME" sub-command. Nothing here is re-implemented: every entry
// hands its arguments to the upstream command (k8s.io/kubernetes/cmd/...) or
// to etcd's embed package.
//
// This package links the Kubernetes server code. Only the node binary may
// import it; the host CLI (cmd/kiln) must not.
package entry

import (
	"fmt"
	"os"
	"sort"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"

	"kiln/configs/node"

	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream's mains do
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream's mains do
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream's mains do
	_ "time/tzdata"                                       // CronJob time zones without /usr/share/zoneinfo
)

// Func runs one component with its argv (without the program name) and
// returns the process exit code.
type Func func(args []string) int

// entries is every entry point by component name: the names are
// configs/node's, the ones the supervisor starts (components.All; a test
// checks the two lists are the same).
var entries = map[string]Func{
	node.ComponentEtcd:              runEtcd,
	node.ComponentAPIServer:         runAPIServer,
	node.ComponentControllerManager: runControllerManager,
	node.ComponentScheduler:         runScheduler,
	node.ComponentAddons:            runAddons,
	node.ComponentCSRApprover:       runApprover,
	node.ComponentJoin:              runJoin,
	node.ComponentContainerd:        runContainerd,
	node.ComponentImportImages:      runImportImages,
	node.ComponentKubelet:           runKubelet,
	node.ComponentFlannel:           runFlannel,
	node.ComponentKubeProxy:         runKubeProxy,
	node.ComponentFirewall:          runFirewall,
	node.ComponentNetworkPolicy:     runNetworkPolicy,
	node.ComponentAPILB:             runAPILB,
	node.ComponentVIP:               runVIP,
	node.ComponentMetricsServer:     runMetricsServer,
	node.ComponentLocalStorage:      runLocalStorage,
}

// Lookup returns the entry point of a component by its name.
func Lookup(name string) (Func, bool) {
	f, ok := entries[name]
	return f, ok
}

// Names lists every compiled-in component, sorted.
func Names() []string {
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// runCobra runs an upstream cobra command the way upstream's main does
// (component-base/cli.Run sets up logging flags and flushes on exit).
func runCobra(cmd *cobra.Command, args []string) int {
	cmd.SetArgs(args)
	// Upstream mains read os.Args; cobra reads SetArgs. Keep os.Args honest for
	// anything that logs it.
	os.Args = append([]string{cmd.Name()}, args...)
	return cli.Run(cmd)
}

func usageError(name string, err error) int {
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	return 2
}
