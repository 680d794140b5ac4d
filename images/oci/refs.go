// Package oci builds the OCI images kiln preloads into containerd (the pod
// sandbox, CoreDNS, a test workload) from Go binaries, and checks the
// image archives users add. These are imported at boot and never pulled,
// so a node needs no registry for them; pods' other images are pulled as
// the node config's registries say (configs/node/registries.go).
//
// The references below are what the node components and add-ons use.
package oci

const (
	PauseRef   = "kiln.local/pause:v1"
	CoreDNSRef = "kiln.local/coredns:v1.14.7"
	EchoRef    = "kiln.local/kiln-echo:v1"
)
