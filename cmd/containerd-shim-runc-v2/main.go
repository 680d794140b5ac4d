// Command containerd-shim-runc-v2 is upstream containerd's runc shim, built
// from kiln's go.mod. containerd starts one per pod; it re-executes itself
// (os.Executable), so it must be its own small binary rather than a mode of
// kiln-node.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task/plugin"
	"github.com/containerd/containerd/v2/pkg/shim"
)

func main() {
	shim.RunShim(context.Background(), manager.NewShimManager("io.containerd.runc.v2"))
}
