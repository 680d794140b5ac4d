// Package oci builds the OCI images kiln preloads into containerd (the pod
// sandbox, CoreDNS, a test workload) from Go binaries, and checks the
// image archives users add. Nothing is ever pulled from a registry.
//
// The references below are what the node components and add-ons use.
package oci

const (
	PauseRef   = "kiln.local/pause:v1"
	CoreDNSRef = "kiln.local/coredns:v1.14.7"
	EchoRef    = "kiln.local/kiln-echo:v1"
)
