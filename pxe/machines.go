package pxe

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"kiln/configs/node"
)

// Machine is what one machine boots: which image, under which name, with
// which address.
type Machine struct {
	MAC  net.HardwareAddr
	Role node.Role
	// Hostname is the node's name; machines the file does not name get
	// <role>-<mac as 12 hex digits>.
	Hostname string
	// Address is a static address with its prefix length; invalid (the
	// zero Prefix) means DHCP.
	Address netip.Prefix
	// Gateway is the default route of a static address (optional).
	Gateway netip.Addr
	// Default is true for a machine the file does not list, booted by
	// its default entry.
	Default bool
	// NodeSecret is the machine's own nodeSecret from the file (16 to
	// 256 characters); empty: the server derives one (Server.NodeSecret).
	NodeSecret Secret
}

// Machines is a parsed machines file: MAC → machine, and what unknown
// machines get.
//
//	machines:
//	  52:54:00:12:34:56:
//	    role: master
//	    hostname: master-1
//	    address: 10.0.0.10/24    # optional: static address (CIDR)
//	    gateway: 10.0.0.1        # optional, with address
//	    nodeSecret: …            # optional: 16-256 characters, else derived
//	  52:54:00:12:34:57: {role: worker, hostname: worker-1}
//	default:
//	  role: worker               # or: default: refuse
//
// A machine gets the boot files of its role's image and its own node
// config, nothing else (see the package doc). The default's role is never
// master: the master image goes only to machines listed as masters. MAC
// addresses are a NIC's own (unicast): a multicast or broadcast address is
// an error. A machine's nodeSecret (its name's key, see Server.NodeSecret)
// is its own: two machines with the same one are an error, and no error
// shows its value.
type Machines struct {
	// Source names the file in messages.
	Source string
	// List is the listed machines in file order.
	List []Machine
	// DefaultRole is what an unlisted machine boots; empty refuses it.
	DefaultRole node.Role

	byMAC map[string]int
}

// DefaultMachines boots every machine as role (empty: refuses all).
func DefaultMachines(role node.Role) *Machines {
	return &Machines{Source: "(no machines file)", DefaultRole: role}
}

// Lookup returns the machine with the MAC address, listed or by default;
// false if it is refused.
func (ms *Machines) Lookup(mac net.HardwareAddr) (Machine, bool) {
	if i, ok := ms.byMAC[mac.String()]; ok {
		return ms.List[i], true
	}
	if ms.DefaultRole == "" || ms.DefaultRole == node.RoleMaster || checkUnicast(mac) != nil {
		return Machine{}, false
	}
	return Machine{MAC: mac, Role: ms.DefaultRole, Hostname: defaultHostname(ms.DefaultRole, mac), Default: true}, true
}

// Roles lists the roles machines may boot (the listed ones and the
// default), each once.
func (ms *Machines) Roles() []node.Role {
	var out []node.Role
	seen := map[node.Role]bool{}
	add := func(r node.Role) {
		if r != "" && !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	for _, m := range ms.List {
		add(m.Role)
	}
	add(ms.DefaultRole)
	return out
}

func defaultHostname(role node.Role, mac net.HardwareAddr) string {
	return string(role) + "-" + hex.EncodeToString(mac)
}

// ParseMAC reads an Ethernet address: 52:54:00:12:34:56, 52-54-00-12-34-56,
// 5254.0012.3456 or 525400123456, any case.
func ParseMAC(s string) (net.HardwareAddr, error) {
	s = strings.TrimSpace(s)
	if len(s) == 12 {
		if b, err := hex.DecodeString(s); err == nil {
			return net.HardwareAddr(b), nil
		}
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%q is not an Ethernet MAC address (e.g. 52:54:00:12:34:56)", s)
	}
	return mac, nil
}

// checkUnicast refuses what cannot be a network card's own address: the
// wrong length, a multicast or the broadcast address (the lowest bit of the
// first byte set), all zeros.
func checkUnicast(mac net.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("%s is not an Ethernet MAC address", mac)
	case mac.String() == "ff:ff:ff:ff:ff:ff":
		return fmt.Errorf("%s is the broadcast address, not a network card's", mac)
	case mac[0]&1 != 0:
		return fmt.Errorf("%s is a multicast address (the lowest bit of its first byte is set), not a network card's", mac)
	case mac.String() == "00:00:00:00:00:00":
		return fmt.Errorf("%s is not a network card's address", mac)
	}
	return nil
}

// macPath is a MAC address as it appears in URLs: 52-54-00-12-34-56.
func macPath(mac net.HardwareAddr) string {
	return strings.ReplaceAll(mac.String(), ":", "-")
}

// LoadMachines reads and parses a machines file.
func LoadMachines(path string) (*Machines, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("machines file: %w", err)
	}
	return ParseMachines(path, data)
}

// machinesParser collects the errors of one file, each naming the file,
// the line and the field.
type machinesParser struct {
	source string
	errs   []error
}

func (p *machinesParser) errorf(n *yaml.Node, field, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s:%d: %s: %s", p.source, n.Line, field, fmt.Sprintf(format, args...)))
}

// ParseMachines parses a machines file; source names it in errors. It is
// strict: unknown fields, duplicate MAC addresses, host names or
// addresses, and values of the wrong kind are errors.
func ParseMachines(source string, data []byte) (*Machines, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %s", source, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, fmt.Errorf("%s: empty (want \"machines:\" and \"default:\")", source)
	}
	doc := root.Content[0]
	p := &machinesParser{source: source}
	ms := &Machines{Source: source, byMAC: map[string]int{}}
	if doc.Kind != yaml.MappingNode {
		p.errorf(doc, "top level", "want a mapping with \"machines:\" and \"default:\"")
		return nil, errors.Join(p.errs...)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		if seen[k.Value] {
			p.errorf(k, k.Value, "given twice")
			continue
		}
		seen[k.Value] = true
		switch k.Value {
		case "machines":
			p.machines(v, ms)
		case "default":
			p.defaultEntry(v, ms)
		default:
			p.errorf(k, k.Value, "unknown field (want \"machines\" or \"default\")")
		}
	}
	if !seen["default"] && len(p.errs) == 0 && len(ms.List) == 0 {
		p.errorf(doc, "machines", "no machine listed and no default: every machine would be refused")
	}
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return ms, nil
}

func (p *machinesParser) defaultEntry(v *yaml.Node, ms *Machines) {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Value == "refuse" {
			ms.DefaultRole = ""
			return
		}
		p.errorf(v, "default", "%q: want \"refuse\" or a mapping such as {role: worker}", v.Value)
	case yaml.MappingNode:
		for i := 0; i+1 < len(v.Content); i += 2 {
			k, val := v.Content[i], v.Content[i+1]
			switch k.Value {
			case "role":
				r, ok := p.role(val, "default.role")
				if ok && r == node.RoleMaster {
					p.errorf(val, "default.role", "master: unknown machines never get the master image (it holds every key of the cluster); "+
						"list each master by its MAC address, and give the default worker or refuse")
					r = node.RoleWorker // reported; do not also report it missing
				}
				if ok {
					ms.DefaultRole = r
				}
			default:
				p.errorf(k, "default."+k.Value, "unknown field (the default takes only \"role\": unlisted machines are named <role>-<mac> and use DHCP)")
			}
		}
		if ms.DefaultRole == "" {
			p.errorf(v, "default.role", "missing (want master or worker)")
		}
	default:
		p.errorf(v, "default", "want \"refuse\" or a mapping such as {role: worker}")
	}
}

func (p *machinesParser) role(v *yaml.Node, field string) (node.Role, bool) {
	if v.Kind != yaml.ScalarNode {
		p.errorf(v, field, "want master or worker")
		return "", false
	}
	r, err := node.ParseRole(v.Value)
	if err != nil {
		p.errorf(v, field, "%v", err)
		return "", false
	}
	return r, true
}

func (p *machinesParser) machines(v *yaml.Node, ms *Machines) {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
		return
	}
	if v.Kind != yaml.MappingNode {
		p.errorf(v, "machines", "want a mapping of MAC address to {role, hostname, address}")
		return
	}
	hostnames := map[string]string{}
	addresses := map[netip.Addr]string{}
	secrets := map[Secret]string{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := v.Content[i], v.Content[i+1]
		field := fmt.Sprintf("machines[%s]", k.Value)
		mac, err := ParseMAC(k.Value)
		if err != nil {
			p.errorf(k, field, "%v", err)
			continue
		}
		if err := checkUnicast(mac); err != nil {
			p.errorf(k, field, "%v: give the MAC address of the machine's boot NIC (on its label, in its firmware setup, or in \"ip link\" on it)", err)
			continue
		}
		if j, dup := ms.byMAC[mac.String()]; dup {
			p.errorf(k, field, "MAC address %s is listed twice (also as machine %s)", mac, ms.List[j].Hostname)
			continue
		}
		m, ok := p.machine(val, field, mac)
		if !ok {
			continue
		}
		if other, dup := hostnames[m.Hostname]; dup {
			p.errorf(val, field+".hostname", "%q is also the name of %s", m.Hostname, other)
			continue
		}
		hostnames[m.Hostname] = mac.String()
		if m.Address.IsValid() {
			if other, dup := addresses[m.Address.Addr()]; dup {
				p.errorf(val, field+".address", "%s is also the address of %s", m.Address.Addr(), other)
				continue
			}
			addresses[m.Address.Addr()] = mac.String()
		}
		if m.NodeSecret != "" {
			if other, dup := secrets[m.NodeSecret]; dup {
				p.errorf(val, field+".nodeSecret", "the same as the nodeSecret of %s: each machine needs its own", other)
				continue
			}
			secrets[m.NodeSecret] = mac.String()
		}
		ms.byMAC[mac.String()] = len(ms.List)
		ms.List = append(ms.List, m)
	}
}

func (p *machinesParser) machine(v *yaml.Node, field string, mac net.HardwareAddr) (Machine, bool) {
	m := Machine{MAC: mac}
	if v.Kind != yaml.MappingNode {
		p.errorf(v, field, "want a mapping such as {role: worker, hostname: worker-1}")
		return m, false
	}
	before := len(p.errs)
	seen := map[string]bool{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := v.Content[i], v.Content[i+1]
		f := field + "." + k.Value
		if seen[k.Value] {
			p.errorf(k, f, "given twice")
			continue
		}
		seen[k.Value] = true
		if val.Kind != yaml.ScalarNode {
			p.errorf(val, f, "want a single value")
			continue
		}
		switch k.Value {
		case "role":
			m.Role, _ = p.role(val, f)
		case "hostname":
			if err := node.CheckHostname(val.Value); err != nil {
				p.errorf(val, f, "%v", err)
			}
			m.Hostname = val.Value
		case "address":
			pfx, err := netip.ParsePrefix(val.Value)
			switch {
			case err != nil || !pfx.Addr().Is4():
				p.errorf(val, f, "%q is not an IPv4 address with a prefix length (e.g. 10.0.0.10/24)", val.Value)
			case pfx.Bits() < 8 || pfx.Bits() > 32:
				p.errorf(val, f, "%q: want a prefix length from 8 to 32", val.Value)
			case pfx.Bits() <= 30 && (pfx.Addr() == pfx.Masked().Addr() || pfx.Addr() == lastAddr(pfx)):
				p.errorf(val, f, "%q is the network's or the broadcast address, not a host's", val.Value)
			default:
				m.Address = pfx
			}
		case "gateway":
			gw, err := netip.ParseAddr(val.Value)
			if err != nil || !gw.Is4() {
				p.errorf(val, f, "%q is not an IPv4 address (e.g. 10.0.0.1)", val.Value)
			} else {
				m.Gateway = gw
			}
		case "nodeSecret":
			// The value is a secret: never echoed.
			if n := len(val.Value); n < 16 || n > 256 {
				p.errorf(val, f, "%d characters; want 16 to 256 (e.g. the output of: head -c 32 /dev/urandom | base64), or leave it out for one derived from the MAC address", n)
			} else {
				m.NodeSecret = Secret(val.Value)
			}
		default:
			p.errorf(k, f, "unknown field (want role, hostname, address, gateway or nodeSecret)")
		}
	}
	if !seen["role"] {
		p.errorf(v, field+".role", "missing (want master or worker)")
	}
	if m.Gateway.IsValid() {
		switch {
		case !seen["address"]:
			p.errorf(v, field+".gateway", "set without address (a DHCP machine gets its router from DHCP)")
		case m.Address.IsValid() && !m.Address.Masked().Contains(m.Gateway):
			p.errorf(v, field+".gateway", "%s is not in %s's network %s", m.Gateway, m.Address.Addr(), m.Address.Masked())
		}
	}
	if len(p.errs) > before {
		return m, false
	}
	if m.Hostname == "" {
		m.Hostname = defaultHostname(m.Role, mac)
	}
	// The document this machine gets must be a valid node config.
	if _, err := node.Parse(m.ConfigYAML(netip.Addr{}, nil)); err != nil {
		p.errorf(v, field, "its node config does not validate: %v", err)
		return m, false
	}
	return m, true
}

// lastAddr is the last address of p's network (the IPv4 broadcast).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ConfigYAML is the node config of the machine: role and hostname, its
// NodeSecret if set and, for a static address, the address and network
// settings. gateway is used when the machine has none of its own (the DHCP
// router, if it is in the machine's network); dns lists name servers for a
// static address. A document with a secret is never logged, and written to
// a file only with mode 0600.
func (m Machine) ConfigYAML(gateway netip.Addr, dns []netip.Addr) []byte {
	doc := node.NewLayer(m.Role, m.Hostname)
	if m.Address.IsValid() {
		off := false
		n := &node.Network{DHCP: &off, Address: m.Address.String()}
		switch {
		case m.Gateway.IsValid():
			n.Gateway = m.Gateway.String()
		case gateway.IsValid() && m.Address.Masked().Contains(gateway) && gateway != m.Address.Addr():
			n.Gateway = gateway.String()
		}
		for _, d := range dns {
			n.DNS = append(n.DNS, d.String())
		}
		doc.Address = m.Address.Addr().String()
		doc.Network = n
	}
	doc.NodeSecret = string(m.NodeSecret)
	src := "listed in the machines file"
	if m.Default {
		src = "the machines file's default"
	}
	return doc.YAML(fmt.Sprintf("kiln pxe: node config of %s (%s)", m.MAC, src))
}
