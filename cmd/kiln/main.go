// kiln is the host CLI: it generates cluster directories and (later) builds
// bootable Kubernetes images from them. It links no Kubernetes code, so it
// stays small and builds in seconds; the Kubernetes components live in
// kiln-node.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
