package main

import (
	"context"
	"os"

	"kiln/configs/image"
	"kiln/configs/nodeapi"
	"kiln/init/boot"
	"kiln/init/supervisor"
	"kiln/init/up"
)

// pid1 is the node binary's life as the image's /init: the boot steps
// (mounts, modules, config, network, state disk), then the role's
// components under the supervisor, exactly as `kiln-node up` runs them.
func pid1() {
	boot.PID1(func(ctx context.Context, n boot.Node) error {
		self, err := os.Executable()
		if err != nil {
			self = "/init"
		}
		// kiln.verbose on the kernel command line puts every component's
		// output on the console too (for debugging a node with no network).
		verbose := n.Cmdline.Has(image.ParamVerbose)
		return up.Run(ctx, up.Options{
			Config:     n.Config,
			ClusterDir: n.ClusterDir,
			DataDir:    n.DataDir,
			Self:       self,
			Console:    n.Console,
			Quiet:      !verbose, // component output goes to DATA/log; the console keeps the stage lines
			Started:    n.Started,
			CgroupRoot: n.CgroupRoot,
			Power:      n.Power,
			Upgrade:    n.Upgrades,
			Supervisor: supervisor.Options{Boot: func() []nodeapi.BootStage {
				var out []nodeapi.BootStage
				for _, s := range n.Stages() {
					out = append(out, nodeapi.BootStage{At: s.At, What: s.What})
				}
				return out
			}},
		})
	})
}
