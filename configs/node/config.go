// Package node holds the node configuration: the one YAML document that says
// what a kiln node is (its role, addresses, ports, per-component overrides).
//
// Parsing is strict: unknown fields are rejected, every error names the file,
// the line and the field, and says what would be accepted. Defaults are filled
// in one place (Default), so the zero config is a working single master on
// loopback.
package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"kiln/internal/bounded"
)

// APIVersion and Kind identify a node config document.
const (
	APIVersion = "kiln.dev/v1alpha1"
	Kind       = "NodeConfig"
)

// Role is what a node runs.
type Role string

const (
	RoleMaster Role = "master"
	RoleWorker Role = "worker"
)

// ParseRole checks that s names a role. Every reader of a role (flags,
// image manifests, machines files, the kernel command line, the config)
// goes through it, so they all accept and refuse the same words.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleMaster, RoleWorker:
		return r, nil
	}
	return "", fmt.Errorf("%s is not a role (want %s or %s)", bounded.Quote(s), RoleMaster, RoleWorker)
}

// Config is the node configuration. Field names are the YAML keys.
type Config struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Role       Role   `yaml:"role"`
	// Hostname is the node's name; empty means the machine's hostname.
	Hostname string `yaml:"hostname,omitempty"`
	// Address is the IP the components bind to and advertise.
	Address string `yaml:"address,omitempty"`
	Ports   Ports  `yaml:"ports,omitempty"`
	// ExtraArgs adds or overrides flags of a component, e.g.
	// {"kube-apiserver": {"v": "2"}}. Keys are flag names without dashes.
	// An empty value removes a default flag.
	ExtraArgs map[string]map[string]string `yaml:"extraArgs,omitempty"`
	// Network is how an appliance (kiln as PID 1) configures its NIC.
	Network Network `yaml:"network,omitempty"`
	// Storage is where an appliance keeps its state (/var/lib).
	Storage Storage `yaml:"storage,omitempty"`
	// APIEndpoint is where a worker's node-local API load balancer
	// (127.0.0.1:6444, which its kubelet, kube-proxy, pod network and join
	// use) starts when controlPlane.masters is empty: https://HOST:PORT;
	// empty means the cluster's endpoint (cluster.yaml). Workers behind a
	// different route than the users' (a private L2, an internal load
	// balancer) set it.
	APIEndpoint string `yaml:"apiEndpoint,omitempty"`
	// RunPods makes a master a node too: it also runs containerd, the
	// kubelet, kube-proxy and the pod network, so one machine is a whole
	// cluster. Default true. Workers always run pods.
	RunPods bool `yaml:"runPods"`
	// Schedulable removes the control-plane taint from a master that runs
	// pods, so ordinary workloads are scheduled on it. Default false.
	Schedulable bool `yaml:"schedulable,omitempty"`
	// NodeSecret is this machine's own secret (16 to 256 characters): the
	// node name is bound to it at the first join, and another machine
	// cannot take the name. kiln pxe serve and kiln cluster give each
	// machine one; a node with a state disk makes its own. Never printed.
	NodeSecret string `yaml:"nodeSecret,omitempty"`
	// PodSecurity is the cluster-wide Pod Security Admission default (a
	// master's API server), for namespaces that set no level of their own.
	PodSecurity PodSecurity `yaml:"podSecurity,omitempty"`
	// ControlPlane says where the cluster's masters are, for a cluster of
	// more than one.
	ControlPlane ControlPlane `yaml:"controlPlane,omitempty"`
	Registries   Registries   `yaml:"registries,omitempty"` // where pods' images are pulled from: mirrors, CAs, credentials (registries.go)
	// Certificates is how long the node's leaf certificates live
	// (certs.go).
	Certificates Certificates `yaml:"certificates,omitempty"`
}

// ControlPlane is what a node knows of the cluster's masters.
type ControlPlane struct {
	// Masters are the node addresses of every master of the cluster
	// (this one's included, on a master), e.g. [10.0.0.10, 10.0.0.11,
	// 10.0.0.12]. Empty: one master. On a master they are etcd's peers:
	// a master with no etcd data joins the members it finds there, and
	// only the first of the list may start a new cluster when none
	// answers. On a worker they seed the node-local API load balancer
	// until it learns the masters from the cluster.
	Masters []string `yaml:"masters,omitempty"`
	// Snapshots are a master's scheduled etcd snapshots, kept on its
	// state disk (DATA/etcd-snapshots); a diskless master takes none
	// (they would be in RAM beside the data they are meant to outlive).
	Snapshots Snapshots `yaml:"snapshots,omitempty"`
	// VIP is the API's virtual IP (IPv4), held by one master at a time (vip.go).
	VIP string `yaml:"vip,omitempty"`
}

// Snapshots schedule a master's etcd snapshots.
type Snapshots struct {
	// Interval between two snapshots, e.g. 6h or 90m; 0 turns them off.
	// Default 6h.
	Interval Duration `yaml:"interval"`
	// Keep is how many snapshots are kept, the newest (1 to 100).
	// Default 5.
	Keep int `yaml:"keep"`
}

// Defaults and bounds of controlPlane.snapshots.
const (
	DefaultSnapshotInterval = 6 * time.Hour
	DefaultSnapshotKeep     = 5
	MinSnapshotInterval     = time.Minute
	MaxSnapshotKeep         = 100
)

// Duration is a time.Duration written as Go writes one ("6h", "90m",
// "1h30m"); the number 0 is a duration too (off).
type Duration time.Duration

// UnmarshalYAML reads "6h" or 0 (yaml.v3 reads neither a bare 0 nor
// "6h" into a time.Duration by itself the way a config wants).
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as 6h or 90m (or 0)", n.Line)
	}
	if n.Value == "0" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %s is not a duration: want a number and a unit, such as 6h, 90m or 1h30m (or 0)", n.Line, bounded.Quote(n.Value))
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as Go does ("6h0m0s").
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// String is the duration as Go writes it.
func (d Duration) String() string { return time.Duration(d).String() }

func (s Snapshots) validate() []error {
	var errs []error
	if iv := time.Duration(s.Interval); iv != 0 && iv < MinSnapshotInterval {
		errs = append(errs, fmt.Errorf("controlPlane.snapshots.interval: %s is shorter than %s; write 0 to turn scheduled snapshots off, or e.g. 6h", iv, MinSnapshotInterval))
	}
	if s.Keep < 1 || s.Keep > MaxSnapshotKeep {
		errs = append(errs, fmt.Errorf("controlPlane.snapshots.keep: %d; want 1 to %d (the newest kept, e.g. %d)", s.Keep, MaxSnapshotKeep, DefaultSnapshotKeep))
	}
	return errs
}

// PeerMasters are the masters other than this node, in the order of
// controlPlane.masters.
func (c *Config) PeerMasters() []string {
	var out []string
	for _, m := range c.ControlPlane.Masters {
		if !sameIP(m, c.Address) {
			out = append(out, m)
		}
	}
	return out
}

// Bootstraps reports whether this master may start a new etcd cluster
// when it has no data and no other master answers: the first of
// controlPlane.masters, or the only master.
func (c *Config) Bootstraps() bool {
	m := c.ControlPlane.Masters
	return c.Role == RoleMaster && (len(m) == 0 || sameIP(m[0], c.Address))
}

func sameIP(a, b string) bool {
	x, y := net.ParseIP(a), net.ParseIP(b)
	return x != nil && y != nil && x.Equal(y)
}

// PodSecurity levels: privileged, baseline or restricted.
type PodSecurity struct {
	// Enforce refuses pods that break the level. Default baseline.
	Enforce string `yaml:"enforce,omitempty"`
	// Warn tells the client about pods that break the level. Default
	// restricted.
	Warn string `yaml:"warn,omitempty"`
	// Audit records pods that break the level in the audit log. Default
	// restricted.
	Audit string `yaml:"audit,omitempty"`
	// Exempt namespaces are not checked. Default [kube-system].
	ExemptNamespaces []string `yaml:"exemptNamespaces,omitempty"`
}

// RunsPods reports whether the node runs the worker stack.
func (c *Config) RunsPods() bool { return c.Role == RoleWorker || c.RunPods }

// Ports are the TCP ports the master components listen on.
type Ports struct {
	APIServer         int `yaml:"apiServer,omitempty"`
	EtcdClient        int `yaml:"etcdClient,omitempty"`
	EtcdPeer          int `yaml:"etcdPeer,omitempty"`
	ControllerManager int `yaml:"controllerManager,omitempty"`
	Scheduler         int `yaml:"scheduler,omitempty"`
	// MetricsServer is the masters' metrics-server, on loopback only.
	MetricsServer int `yaml:"metricsServer,omitempty"`
}

// Default returns the configuration every node starts from.
func Default() Config {
	return Config{
		APIVersion: APIVersion,
		Kind:       Kind,
		Role:       RoleMaster,
		Address:    "127.0.0.1",
		RunPods:    true,
		PodSecurity: PodSecurity{
			Enforce: "baseline", Warn: "restricted", Audit: "restricted",
			ExemptNamespaces: []string{"kube-system"},
		},
		ControlPlane: ControlPlane{
			Snapshots: Snapshots{Interval: Duration(DefaultSnapshotInterval), Keep: DefaultSnapshotKeep},
		},
		Certificates: Certificates{Validity: Duration(DefaultCertValidity)},
		Ports: Ports{
			APIServer:         6443,
			EtcdClient:        2379,
			EtcdPeer:          2380,
			ControllerManager: 10257,
			Scheduler:         10259,
			MetricsServer:     10262,
		},
	}
}

// MaxFileSize caps a node config file (or a fetched one): a config that
// is bigger, or never ends (a symlink to /dev/zero), is an error, not a
// process that fills the memory.
const MaxFileSize = bounded.MaxConfigFile

// ReadFile reads a config file of at most MaxFileSize bytes. Errors are
// *fs.PathError, as os.ReadFile's.
func ReadFile(path string) ([]byte, error) { return bounded.ReadFile(path, MaxFileSize) }

// Load reads a config file over the defaults. The error names the file.
func Load(path string) (Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, errors.Unwrap(err))
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes a config document over the defaults, strictly, then
// validates it.
func Parse(data []byte) (Config, error) {
	return Overlay(Default(), data)
}

// Overlay decodes a config document over base, strictly, then validates the
// result: the fields the document sets replace base's (a mapping such as
// extraArgs is merged key by key), the others keep base's values. PID 1 uses
// it to stack its config sources (embedded, config drive, kiln.config=).
// base is not modified.
//
// A key without a value (null: "key:", "key: null", "key: ~") changes
// nothing at any depth: "extraArgs: {kubelet: null}" keeps the kubelet
// flags base has. An empty string is a value: a flag set to "" removes
// it (Args). A file holds one document: a second one is an error, not
// silently ignored.
func Overlay(base Config, data []byte) (Config, error) {
	if len(data) > MaxFileSize {
		return Config{}, &bounded.TooLargeError{Max: MaxFileSize}
	}
	doc, err := oneDocument(data)
	if err != nil {
		return Config{}, err
	}
	cfg := base.Clone()
	if doc == nil {
		// An empty document changes nothing.
		if err := cfg.Validate(); err != nil {
			return Config{}, err
		}
		return cfg, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, cleanYAMLError(err)
	}
	// The decoder replaces a component's whole flag map: keep the base's
	// flags the document does not mention.
	if cfg.ExtraArgs == nil && base.ExtraArgs != nil {
		cfg.ExtraArgs = map[string]map[string]string{} // extraArgs: null; keepNulls restores it
	}
	for comp, flags := range base.ExtraArgs {
		got := cfg.ExtraArgs[comp]
		if got == nil {
			continue
		}
		for k, v := range flags {
			if _, set := got[k]; !set {
				got[k] = v
			}
		}
	}
	keepNulls(doc, reflect.ValueOf(&cfg).Elem(), reflect.ValueOf(base.Clone()))
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// oneDocument returns the mapping of data's document (nil for an empty
// document), and an error for a second document with content: the
// decoder would read the first and silently ignore the rest. A trailing
// "---" is no second document.
func oneDocument(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var first *yaml.Node
	for n := 0; ; n++ {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return first, nil
		} else if err != nil {
			return nil, cleanYAMLError(err)
		}
		var content *yaml.Node
		if len(doc.Content) > 0 && !isNull(doc.Content[0]) {
			content = doc.Content[0]
		}
		switch {
		case n == 0:
			first = content
		case content != nil:
			return nil, fmt.Errorf("line %d: a second YAML document: one document per file (a node config is one document; put all of it in the first)", doc.Line)
		}
	}
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// keepNulls gives every field or map entry the document sets to null
// (dst, decoded from n) its value in base again: null means "no change".
// It walks n's mappings along dst's structs and maps; base is a copy
// dst may share.
func keepNulls(n *yaml.Node, dst, base reflect.Value) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i].Value, n.Content[i+1]
		switch dst.Kind() {
		case reflect.Struct:
			f := fieldByTag(dst.Type(), key)
			if f < 0 {
				continue // strict decoding refused it
			}
			switch {
			case isNull(val):
				dst.Field(f).Set(base.Field(f))
			case val.Kind == yaml.MappingNode:
				keepNulls(val, dst.Field(f), base.Field(f))
			}
		case reflect.Map:
			if dst.IsNil() || dst.Type().Key().Kind() != reflect.String {
				continue
			}
			k := reflect.ValueOf(key).Convert(dst.Type().Key())
			var old reflect.Value // invalid: base has no such entry
			if !base.IsNil() {
				old = base.MapIndex(k)
			}
			switch {
			case isNull(val):
				dst.SetMapIndex(k, old) // an invalid old deletes the entry
			case val.Kind == yaml.MappingNode && dst.Type().Elem().Kind() == reflect.Map:
				if !old.IsValid() {
					old = reflect.Zero(dst.Type().Elem()) // nothing to keep: a null deletes
				}
				keepNulls(val, dst.MapIndex(k), old)
			}
		}
	}
}

// fieldByTag returns the index of t's field whose yaml name is name, or
// -1.
func fieldByTag(t reflect.Type, name string) int {
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag == name {
			return i
		}
	}
	return -1
}

// yaml.v3 reports "line 3: field foo not found in type node.Config": say it
// in the config's own words.
var (
	notFound = regexp.MustCompile(`field (.+) not found in type (\S+)`)
	quoted   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
)

func cleanYAMLError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
	msg = strings.ReplaceAll(msg, "\n  line ", "\nline ")
	msg = notFound.ReplaceAllStringFunc(msg, func(m string) string {
		sub := notFound.FindStringSubmatch(m)
		hint := "see configs/README.md for the fields"
		if sub[1] == "endpoint" && sub[2] == "node.Mirror" {
			hint = "kiln calls it endpoints, a list" // k3s's registries.yaml spelling
		}
		return "unknown field " + bounded.Quote(sub[1]) + " (" + hint + ")"
	})
	// Keys the decoder quotes itself ("mapping key ... already defined").
	msg = quoted.ReplaceAllStringFunc(msg, func(q string) string {
		if len(q) <= bounded.MaxEcho+2 {
			return q
		}
		if s, err := strconv.Unquote(q); err == nil {
			return bounded.Quote(s)
		}
		return q
	})
	msg = strings.ReplaceAll(msg, "!!str", "text")
	msg = strings.ReplaceAll(msg, "!!int", "a number")
	msg = strings.ReplaceAll(msg, "!!map", "a mapping")
	msg = strings.ReplaceAll(msg, "!!seq", "a list")
	return joinErrors(strings.Split(msg, "\n"))
}

// maxErrors is how many problems of one config an error lists: a file
// with thousands of bad keys gets a readable message, not a huge one.
const maxErrors = 10

// joinErrors joins problems one a line, the first maxErrors of them.
func joinErrors(problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	lines := problems[:min(len(problems), maxErrors):min(len(problems), maxErrors)]
	if n := len(problems) - maxErrors; n > 0 {
		lines = append(lines, fmt.Sprintf("… and %d more", n))
	}
	return errors.New(strings.Join(lines, "\n"))
}

// Validate checks the meaning of the fields. Each error names the field and
// the accepted values.
func (c *Config) Validate() error {
	var errs []error
	if c.APIVersion != APIVersion {
		errs = append(errs, fmt.Errorf("apiVersion: %s is not supported (want %q)", bounded.Quote(c.APIVersion), APIVersion))
	}
	if c.Kind != Kind {
		errs = append(errs, fmt.Errorf("kind: %s is not supported (want %q)", bounded.Quote(c.Kind), Kind))
	}
	if _, err := ParseRole(string(c.Role)); err != nil {
		errs = append(errs, fmt.Errorf("role: %w", err))
	}
	if c.Hostname != "" {
		if err := CheckHostname(c.Hostname); err != nil {
			errs = append(errs, fmt.Errorf("hostname: %w", err))
		}
	}
	if c.APIEndpoint != "" {
		if err := validEndpoint(c.APIEndpoint); err != nil {
			errs = append(errs, fmt.Errorf("apiEndpoint: %s %v (e.g. https://192.168.1.10:6443)", bounded.Quote(c.APIEndpoint), err))
		}
	}
	if net.ParseIP(c.Address) == nil {
		errs = append(errs, fmt.Errorf("address: %s is not an IP address (e.g. 192.168.1.10)", bounded.Quote(c.Address)))
	}
	seen := map[int]string{}
	for _, p := range []struct {
		name string
		v    int
	}{
		{"ports.apiServer", c.Ports.APIServer},
		{"ports.etcdClient", c.Ports.EtcdClient},
		{"ports.etcdPeer", c.Ports.EtcdPeer},
		{"ports.controllerManager", c.Ports.ControllerManager},
		{"ports.scheduler", c.Ports.Scheduler},
		{"ports.metricsServer", c.Ports.MetricsServer},
	} {
		if p.v < 1 || p.v > 65535 {
			errs = append(errs, fmt.Errorf("%s: %d is not a TCP port (1-65535)", p.name, p.v))
			continue
		}
		if other, dup := seen[p.v]; dup {
			errs = append(errs, fmt.Errorf("%s: port %d is already used by %s", p.name, p.v, other))
		}
		seen[p.v] = p.name
	}
	names := make([]string, 0, len(c.ExtraArgs))
	for n := range c.ExtraArgs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !slices.Contains(knownComponents, n) {
			errs = append(errs, fmt.Errorf("extraArgs: %s is not a component (want one of %s)", bounded.Quote(n), strings.Join(knownComponents, ", ")))
			continue
		}
		for flag := range c.ExtraArgs[n] {
			if strings.HasPrefix(flag, "-") || flag == "" || strings.ContainsAny(flag, " =") {
				errs = append(errs, fmt.Errorf("extraArgs.%s: %s: write flag names without dashes or '=', e.g. \"v\": \"2\"", n, bounded.Quote(flag)))
			}
		}
	}
	errs = append(errs, c.Network.validate()...)
	errs = append(errs, c.Storage.validate()...)
	if n := len(c.NodeSecret); c.NodeSecret != "" && (n < 16 || n > 256) {
		// The value is a secret: never echoed.
		errs = append(errs, fmt.Errorf("nodeSecret: %d characters; want 16 to 256 (e.g. the output of: head -c 32 /dev/urandom | base64)", n))
	}
	errs = append(errs, c.PodSecurity.validate()...)
	errs = append(errs, c.validateControlPlane()...)
	errs = append(errs, c.Registries.validate()...)
	errs = append(errs, c.Certificates.validate()...)
	problems := make([]string, len(errs))
	for i, e := range errs {
		problems[i] = e.Error()
	}
	return joinErrors(problems)
}

// dnsLabel is an RFC 1123 DNS label, what Kubernetes accepts as a node
// name made of one label.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// CheckHostname checks that s can be a node's hostname and Kubernetes
// name: one DNS label (lowercase letters, digits and '-', at most 63
// characters, starting and ending with a letter or digit). Every reader of
// a hostname (the config, machines files) goes through it.
func CheckHostname(s string) error {
	if !dnsLabel.MatchString(s) {
		return fmt.Errorf("%s is not a valid node name (lowercase letters, digits and '-', at most 63)", bounded.Quote(s))
	}
	return nil
}

// validEndpoint checks an https://HOST:PORT URL.
func validEndpoint(s string) error {
	rest, ok := strings.CutPrefix(s, "https://")
	if !ok {
		return errors.New("does not start with https://")
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil || host == "" {
		return errors.New("is not https://HOST:PORT")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return errors.New("has no valid port (1-65535)")
	}
	return nil
}

func (c *Config) validateControlPlane() []error {
	var errs []error
	seen := map[string]bool{}
	self := false
	for i, m := range c.ControlPlane.Masters {
		ip := net.ParseIP(m)
		if ip == nil || ip.IsUnspecified() {
			errs = append(errs, fmt.Errorf("controlPlane.masters[%d]: %s is not an IP address (list every master's node address, e.g. [10.0.0.10, 10.0.0.11, 10.0.0.12])", i, bounded.Quote(m)))
			continue
		}
		if seen[ip.String()] {
			errs = append(errs, fmt.Errorf("controlPlane.masters[%d]: %s is listed twice", i, m))
		}
		seen[ip.String()] = true
		self = self || sameIP(m, c.Address)
	}
	errs = append(errs, c.ControlPlane.Snapshots.validate()...)
	errs = append(errs, c.validateVIP()...)
	// A loopback address is the default, before PID 1 has set the
	// network's (DHCP): the list is checked again with the real one.
	if ip := net.ParseIP(c.Address); c.Role == RoleMaster && len(c.ControlPlane.Masters) > 0 && !self && ip != nil && !ip.IsLoopback() {
		errs = append(errs, fmt.Errorf("controlPlane.masters: this master's address %s is not in the list: list every master, this one included", bounded.Quote(c.Address)))
	}
	return errs
}

// podSecurityLevels are Pod Security Admission's levels.
var podSecurityLevels = []string{"privileged", "baseline", "restricted"}

func (p PodSecurity) validate() []error {
	var errs []error
	for _, l := range []struct{ field, v string }{{"enforce", p.Enforce}, {"warn", p.Warn}, {"audit", p.Audit}} {
		if !slices.Contains(podSecurityLevels, l.v) {
			errs = append(errs, fmt.Errorf("podSecurity.%s: %s is not a level (want %s)", l.field, bounded.Quote(l.v), strings.Join(podSecurityLevels, ", ")))
		}
	}
	for _, ns := range p.ExemptNamespaces {
		if !dnsLabel.MatchString(ns) {
			errs = append(errs, fmt.Errorf("podSecurity.exemptNamespaces: %s is not a namespace name", bounded.Quote(ns)))
		}
	}
	return errs
}
