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
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
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
	return "", fmt.Errorf("%q is not a role (want %s or %s)", s, RoleMaster, RoleWorker)
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
	// APIEndpoint is the API server this node's kubelet, kube-proxy and pod
	// network talk to, https://HOST:PORT; empty means the cluster's endpoint
	// (cluster.yaml). Workers behind a different route than the users' (a
	// private L2, an internal load balancer) set it.
	APIEndpoint string `yaml:"apiEndpoint,omitempty"`
	// RunPods makes a master a node too: it also runs containerd, the
	// kubelet, kube-proxy and the pod network, so one machine is a whole
	// cluster. Default true. Workers always run pods.
	RunPods bool `yaml:"runPods"`
	// Schedulable removes the control-plane taint from a master that runs
	// pods, so ordinary workloads are scheduled on it. Default false.
	Schedulable bool `yaml:"schedulable,omitempty"`
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
}

// Default returns the configuration every node starts from.
func Default() Config {
	return Config{
		APIVersion: APIVersion,
		Kind:       Kind,
		Role:       RoleMaster,
		Address:    "127.0.0.1",
		RunPods:    true,
		Ports: Ports{
			APIServer:         6443,
			EtcdClient:        2379,
			EtcdPeer:          2380,
			ControllerManager: 10257,
			Scheduler:         10259,
		},
	}
}

// Load reads a config file over the defaults. The error names the file.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
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
func Overlay(base Config, data []byte) (Config, error) {
	cfg := base.Clone()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// An empty document (io.EOF) changes nothing.
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, cleanYAMLError(err)
	}
	// The decoder replaces a component's whole flag map: keep the base's
	// flags the document does not mention.
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
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// yaml.v3 reports "line 3: field foo not found in type node.Config": say it
// in the config's own words.
var notFound = regexp.MustCompile(`field (\S+) not found in type \S+`)

func cleanYAMLError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
	msg = notFound.ReplaceAllString(msg, `unknown field "$1" (see configs/README.md for the fields)`)
	msg = strings.ReplaceAll(msg, "!!str", "text")
	msg = strings.ReplaceAll(msg, "!!int", "a number")
	msg = strings.ReplaceAll(msg, "!!map", "a mapping")
	msg = strings.ReplaceAll(msg, "!!seq", "a list")
	return errors.New(msg)
}

// Validate checks the meaning of the fields. Each error names the field and
// the accepted values.
func (c *Config) Validate() error {
	var errs []error
	if c.APIVersion != APIVersion {
		errs = append(errs, fmt.Errorf("apiVersion: %q is not supported (want %q)", c.APIVersion, APIVersion))
	}
	if c.Kind != Kind {
		errs = append(errs, fmt.Errorf("kind: %q is not supported (want %q)", c.Kind, Kind))
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
			errs = append(errs, fmt.Errorf("apiEndpoint: %q %v (e.g. https://192.168.1.10:6443)", c.APIEndpoint, err))
		}
	}
	if net.ParseIP(c.Address) == nil {
		errs = append(errs, fmt.Errorf("address: %q is not an IP address (e.g. 192.168.1.10)", c.Address))
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
			errs = append(errs, fmt.Errorf("extraArgs: %q is not a component (want one of %s)", n, strings.Join(knownComponents, ", ")))
			continue
		}
		for flag := range c.ExtraArgs[n] {
			if strings.HasPrefix(flag, "-") || flag == "" || strings.ContainsAny(flag, " =") {
				errs = append(errs, fmt.Errorf("extraArgs.%s: %q: write flag names without dashes or '=', e.g. \"v\": \"2\"", n, flag))
			}
		}
	}
	errs = append(errs, c.Network.validate()...)
	errs = append(errs, c.Storage.validate()...)
	return errors.Join(errs...)
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
		return fmt.Errorf("%q is not a valid node name (lowercase letters, digits and '-', at most 63)", s)
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
