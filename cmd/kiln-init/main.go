// Command kiln-init is the /init of every kiln initramfs: stage 1 of the
// boot (init/stage1). It mounts the image's compressed read-only root and
// executes kiln-node, the node's real PID 1, from it. It links no
// Kubernetes code, so the initramfs stays a few megabytes beside the root
// image.
package main

import "kiln/init/stage1"

func main() { stage1.Main() }
