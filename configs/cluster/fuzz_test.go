package cluster

import (
	"testing"

	"sigs.k8s.io/yaml"
)

// cluster.yaml's checks and the other file parsers never panic.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte("apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nname: kiln\nendpoint: https://10.0.0.1:6443\nserviceCIDR: 10.96.0.0/12\npodCIDR: 10.244.0.0/16\nclusterDNS: 10.96.0.10\nclusterDomain: cluster.local\ncaHash: sha256:00\ncreated: \"2026-01-01T00:00:00Z\"\n"))
	f.Add([]byte("name: a\n---\nname: b\n"))
	f.Add([]byte("endpoint: \"https://[::1%25x]:1\"\nserviceCIDR: ::/0\npodCIDR: ::/1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = oneDocument(data)
		var c configFile
		if yaml.UnmarshalStrict(data, &c) == nil {
			_ = c.validate()
		}
		_, _ = NormalizeEndpoint(string(data))
		_ = ValidateName(string(data))
		_, _ = decodeEncryptionKey(data)
	})
}
