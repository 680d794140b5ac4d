package node

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"kiln/configs/image"
	"kiln/internal/bounded"
)

// Network says how PID 1 configures the node's network. The zero value is
// DHCPv4 on the first interface with a carrier.
//
//	network:
//	  interface: auto          # or a name such as eth0
//	  dhcp: false              # default: true unless address is set
//	  address: 192.168.1.10/24
//	  gateway: 192.168.1.1
//	  dns: [192.168.1.1]
type Network struct {
	// Interface is the NIC to configure: "auto" (or empty) picks the
	// first one with a carrier.
	Interface string `yaml:"interface,omitempty"`
	// DHCP asks for an address with DHCPv4. Unset, it is true unless a
	// static Address is given.
	DHCP *bool `yaml:"dhcp,omitempty"`
	// Address is a static address with its prefix length (CIDR).
	Address string `yaml:"address,omitempty"`
	// Gateway is the default route's next hop for a static address.
	Gateway string `yaml:"gateway,omitempty"`
	// DNS lists name servers. With DHCP, a non-empty list replaces the
	// servers the DHCP server offers.
	DNS []string `yaml:"dns,omitempty"`
	// Additional are further NICs to bring up, each named, with a static
	// address (and a gateway or DNS servers only if given). The node's
	// address, default route and DNS come from the main interface.
	//
	//	network:
	//	  interface: eth0
	//	  address: 10.120.0.10/24
	//	  additional:
	//	  - interface: eth1
	//	    address: 10.0.2.15/24
	Additional []Network `yaml:"additional,omitempty"`
}

// InterfaceAuto is the Network.Interface value that picks the first NIC with
// a carrier.
const InterfaceAuto = "auto"

// AutoInterface reports whether the interface is chosen by PID 1.
func (n Network) AutoInterface() bool { return n.Interface == "" || n.Interface == InterfaceAuto }

// UsesDHCP reports whether the address comes from DHCPv4.
func (n Network) UsesDHCP() bool {
	if n.DHCP != nil {
		return *n.DHCP
	}
	return n.Address == ""
}

func (n Network) validate() []error {
	errs := n.validateOne("network")
	seen := map[string]string{}
	if !n.AutoInterface() {
		seen[n.Interface] = "network.interface"
	}
	for i, a := range n.Additional {
		field := fmt.Sprintf("network.additional[%d]", i)
		switch {
		case a.AutoInterface():
			errs = append(errs, fmt.Errorf("%s.interface: an additional interface must be named (e.g. eth1)", field))
		case seen[a.Interface] != "":
			errs = append(errs, fmt.Errorf("%s.interface: %s is already configured by %s", field, bounded.Quote(a.Interface), seen[a.Interface]))
		default:
			seen[a.Interface] = field + ".interface"
		}
		if a.UsesDHCP() {
			errs = append(errs, fmt.Errorf("%s: an additional interface needs a static address (e.g. address: 10.0.2.15/24); DHCP runs on the main interface only", field))
		}
		if len(a.Additional) > 0 {
			errs = append(errs, fmt.Errorf("%s.additional: only the main network section has additional interfaces", field))
		}
		for _, e := range a.validateOne(field) {
			errs = append(errs, e)
		}
	}
	return errs
}

// validateOne checks one interface's fields; errors name field.X.
func (n Network) validateOne(field string) []error {
	var errs []error
	if !n.AutoInterface() && !validIfName(n.Interface) {
		errs = append(errs, fmt.Errorf("%s.interface: %s is not an interface name (want %q or a name such as eth0, at most 15 characters, no '/', ':' or spaces)", field, bounded.Quote(n.Interface), InterfaceAuto))
	}
	var prefix netip.Prefix
	if n.Address != "" {
		p, err := netip.ParsePrefix(n.Address)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.address: %s is not an address with a prefix length (e.g. 192.168.1.10/24)", field, bounded.Quote(n.Address)))
		} else {
			prefix = p
		}
	}
	switch {
	case n.DHCP != nil && *n.DHCP && n.Address != "":
		errs = append(errs, fmt.Errorf("%s.address: %s is set together with %s.dhcp: true (want dhcp: false for a static address, or no address)", field, bounded.Quote(n.Address), field))
	case n.DHCP != nil && !*n.DHCP && n.Address == "":
		errs = append(errs, fmt.Errorf("%s.dhcp: false needs %s.address (a static address with its prefix length, e.g. 192.168.1.10/24)", field, field))
	}
	if n.Gateway != "" {
		gw, err := netip.ParseAddr(n.Gateway)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s.gateway: %s is not an IP address (e.g. 192.168.1.1)", field, bounded.Quote(n.Gateway)))
		case n.UsesDHCP():
			errs = append(errs, fmt.Errorf("%s.gateway: %s is set with DHCP (want it only with a static %s.address; DHCP gives the router)", field, bounded.Quote(n.Gateway), field))
		case prefix.IsValid() && gw.Is4() != prefix.Addr().Is4():
			errs = append(errs, fmt.Errorf("%s.gateway: %s is not of the same IP family as %s.address %s", field, bounded.Quote(n.Gateway), field, bounded.Quote(n.Address)))
		}
	}
	for i, d := range n.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			errs = append(errs, fmt.Errorf("%s.dns[%d]: %s is not an IP address (e.g. 1.1.1.1)", field, i, bounded.Quote(d)))
		}
	}
	return errs
}

func validIfName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	return !strings.ContainsAny(s, "/: \t\n")
}

// Format says whether PID 1 may format the state disk.
type Format string

const (
	// FormatAuto formats the state disk when it is blank (no file system
	// and no partition table), with ext4 labelled image.StateLabel.
	FormatAuto Format = "auto"
	// FormatNever never formats: a blank disk is an error.
	FormatNever Format = "never"
)

// Storage says where the node keeps its state. The zero value is a
// diskless node (tmpfs, lost at power-off).
//
//	storage:
//	  stateDisk: /dev/vda      # or LABEL=kiln-state
//	  format: auto             # or never
type Storage struct {
	// StateDisk is the block device mounted at /var/lib: a path under
	// /dev, or LABEL=<file system label>. Empty means diskless.
	StateDisk string `yaml:"stateDisk,omitempty"`
	// Format is FormatAuto (the default) or FormatNever.
	Format Format `yaml:"format,omitempty"`
}

// Label returns the label of a LABEL= state disk, or "".
func (s Storage) Label() string {
	l, _ := strings.CutPrefix(s.StateDisk, "LABEL=")
	if l == s.StateDisk {
		return ""
	}
	return l
}

// FormatPolicy returns Format with its default filled in.
func (s Storage) FormatPolicy() Format {
	if s.Format == "" {
		return FormatAuto
	}
	return s.Format
}

func (s Storage) validate() []error {
	var errs []error
	switch {
	case s.StateDisk == "":
	case strings.HasPrefix(s.StateDisk, "LABEL="):
		if l := s.Label(); l == "" || len(l) > 16 || strings.ContainsAny(l, "/ \t\n") {
			errs = append(errs, fmt.Errorf("storage.stateDisk: %s: a label has 1 to 16 characters and no '/' or spaces (e.g. LABEL=%s)", bounded.Quote(s.StateDisk), image.StateLabel))
		}
	case strings.HasPrefix(s.StateDisk, "/dev/") && len(s.StateDisk) > len("/dev/") && !strings.Contains(s.StateDisk, ".."):
	default:
		errs = append(errs, fmt.Errorf("storage.stateDisk: %s is not a device (want a path such as /dev/vda, LABEL=%s, or nothing for a diskless node)", bounded.Quote(s.StateDisk), image.StateLabel))
	}
	switch s.Format {
	case "", FormatAuto, FormatNever:
	default:
		errs = append(errs, fmt.Errorf("storage.format: %s is not a format policy (want %q or %q)", bounded.Quote(string(s.Format)), FormatAuto, FormatNever))
	}
	return errs
}

// Clone returns a deep copy: changing the copy's maps or lists leaves c
// alone.
func (c Config) Clone() Config {
	out := c
	out.PodSecurity.ExemptNamespaces = slices.Clone(c.PodSecurity.ExemptNamespaces)
	out.ControlPlane.Masters = slices.Clone(c.ControlPlane.Masters)
	if c.ExtraArgs != nil {
		out.ExtraArgs = make(map[string]map[string]string, len(c.ExtraArgs))
		for comp, flags := range c.ExtraArgs {
			if flags == nil {
				out.ExtraArgs[comp] = nil
				continue
			}
			m := make(map[string]string, len(flags))
			for k, v := range flags {
				m[k] = v
			}
			out.ExtraArgs[comp] = m
		}
	}
	if c.Network.DHCP != nil {
		v := *c.Network.DHCP
		out.Network.DHCP = &v
	}
	if c.Network.DNS != nil {
		out.Network.DNS = append([]string(nil), c.Network.DNS...)
	}
	out.Registries = c.Registries.Clone()
	return out
}

// SetsField reports whether a config document sets a top-level field (as
// opposed to leaving its default). PID 1 uses it to tell a chosen address
// from the default one. A document that does not parse sets nothing, nor
// does a null value (Overlay: null means no change).
func SetsField(data []byte, field string) bool {
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return false
	}
	v, ok := m[field]
	return ok && v != nil
}
