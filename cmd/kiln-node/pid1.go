package main

import (
	"context"
	"os"

	"kiln/init/boot"
	"kiln/init/up"
)

// pid1 is the node binary's life as the image's /init: the boot phases
// (mounts, modules, config, network, state disk), then the role's
// components under the supervisor, exactly as `kiln-node up` runs them.
func pid1() {
	boot.PID1(func(ctx context.Context, n boot.Node) error {
		self, err := os.Executable()
		if err != nil {
			self = "/init"
		}
		return up.Run(ctx, up.Options{
			Config:     n.Config,
			ClusterDir: n.ClusterDir,
			DataDir:    n.DataDir,
			Self:       self,
			Console:    n.Console,
			Quiet:      true, // component output goes to DATA/log; the console keeps the stage lines
			Started:    n.Started,
			CgroupRoot: n.CgroupRoot,
		})
	})
}
