package node

import (
	"fmt"

	"go.yaml.in/yaml/v3"
)

// Layer is a partial node config that a host tool generates to stack
// over an image's embedded config: kiln pxe serve's per-machine configs
// and kiln cluster's config drives. Only the keys it sets are written, so
// everything else keeps the image's value (a full Config would write
// runPods: false over a master's default, for one).
type Layer struct {
	APIVersion   string                       `yaml:"apiVersion"`
	Kind         string                       `yaml:"kind"`
	Role         Role                         `yaml:"role"`
	Hostname     string                       `yaml:"hostname,omitempty"`
	Address      string                       `yaml:"address,omitempty"`
	APIEndpoint  string                       `yaml:"apiEndpoint,omitempty"`
	Network      *Network                     `yaml:"network,omitempty"`
	ExtraArgs    map[string]map[string]string `yaml:"extraArgs,omitempty"`
	ControlPlane *ControlPlane                `yaml:"controlPlane,omitempty"`
	Storage      *Storage                     `yaml:"storage,omitempty"`
	// Registries may hold credentials: a layer with them is a secret
	// too, written 0600 as with NodeSecret.
	Registries *Registries `yaml:"registries,omitempty"`
	// NodeSecret makes a layer a secret: write it 0600.
	NodeSecret string `yaml:"nodeSecret,omitempty"`
}

// NewLayer starts an layer for a node of role named hostname.
func NewLayer(role Role, hostname string) Layer {
	return Layer{APIVersion: APIVersion, Kind: Kind, Role: role, Hostname: hostname}
}

// YAML renders the layer as a document headed by a comment line that
// says who wrote it and for what.
func (o Layer) YAML(comment string) []byte {
	b, err := yaml.Marshal(o)
	if err != nil {
		panic(err) // a fixed struct of strings, maps and slices
	}
	return append([]byte(fmt.Sprintf("# %s\n", comment)), b...)
}
