package components

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/oci"
	"kiln/internal/bounded"
	"kiln/pki"
)

// Containerd is upstream containerd v2 with its CRI plugin: the runtime the
// kubelet drives. Pods run with runc, on overlayfs, in cgroup v2 (cgroupfs:
// there is no systemd).
type Containerd struct{}

var _ Component = Containerd{}
var _ Prober = Containerd{}
var _ Conditional = Containerd{}
var _ ChildKeeper = Containerd{}

// KeepChildren: when containerd exits, its shims (one per pod) and so the
// pods keep running; the restarted containerd reconnects to them.
func (Containerd) KeepChildren() {}

func (Containerd) Name() string                  { return node.ComponentContainerd }
func (Containerd) Roles() []node.Role            { return []node.Role{node.RoleMaster, node.RoleWorker} }
func (Containerd) Enabled(cfg *node.Config) bool { return cfg.RunsPods() }
func (Containerd) DependsOn() []string           { return nil }
func (Containerd) Flags(env *Env) map[string]string {
	return map[string]string{"config": env.Path(containerdConfig)}
}

const containerdConfig = "config/containerd.toml"

// ContainerdSocket is where containerd serves its API (and CRI).
func ContainerdSocket(env *Env) string { return env.Path("run", "containerd", "containerd.sock") }

// CNIConfDir is where the pod network writes its CNI configuration.
func CNIConfDir(env *Env) string { return env.Path("cni", "net.d") }

// podSysctls are the kernel settings pods need: nodes route between the
// pods' bridge, the VXLAN device and the NIC, and kube-proxy's rules must
// see traffic between two pods on the same bridge (br_netfilter, loaded
// from the image's module list).
var podSysctls = map[string]string{
	"net/ipv4/ip_forward":                 "1",
	"net/bridge/bridge-nf-call-iptables":  "1",
	"net/bridge/bridge-nf-call-ip6tables": "1",
}

// sysctlDir is /proc/sys; tests point it elsewhere.
var sysctlDir = "/proc/sys"

func setPodSysctls() error {
	// Without br_netfilter only the same-node service hairpin is lost.
	return setSysctls(podSysctls, func(key string) bool { return key != "net/ipv4/ip_forward" }, "")
}

// setSysctls writes kernel settings under sysctlDir. A setting the
// kernel does not have is skipped when optional says so (nil: none is);
// why, if given, is said in the error.
func setSysctls(settings map[string]string, optional func(key string) bool, why string) error {
	for key, v := range settings {
		path := sysctlDir + "/" + key
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			if os.IsNotExist(err) && optional != nil && optional(key) {
				continue
			}
			if why != "" {
				return fmt.Errorf("setting %s (%s): %w", path, why, err)
			}
			return fmt.Errorf("setting %s: %w", path, err)
		}
	}
	return nil
}

func (Containerd) Prepare(env *Env) error {
	if err := setPodSysctls(); err != nil {
		return err
	}
	reg := env.Config.Registries
	// The parser checked them; a config built in Go has not been.
	if err := reg.Validate(); err != nil {
		return err
	}
	if err := checkRegistryCAFiles(reg); err != nil {
		return err
	}
	hostsDir := env.Path(registryHostsDir)
	if err := writeRegistryHosts(hostsDir, reg); err != nil {
		return fmt.Errorf("registry hosts %s: %w", hostsDir, err)
	}
	conf := fmt.Sprintf(`# Written by kiln at every start; edits are lost.
version = 3
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  # A pulled image keeps its unpacked layers only, as import-images does
  # for the baked ones: on a diskless node the compressed blobs would sit
  # in RAM (tmpfs) for nothing.
  discard_unpacked_layers = true
  # The images baked into the node image are imported at boot and stay
  # preferred: a pod whose image is present pulls nothing unless its
  # imagePullPolicy is Always. The sandbox image is pinned so that image
  # garbage collection never removes it.
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[4]q
  # The node config's registries: a directory per registry holding its
  # hosts.toml (mirrors in order, then the registry unless said
  # otherwise; CAs), and below the credentials per registry host, which
  # containerd v2 reads only here (config_path has none; upstream keeps
  # registry.configs until a secret store replaces it). This file is
  # 0600 for them.
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %[8]q
%[9]s
[plugins.'io.containerd.cri.v1.runtime']
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %[5]q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[6]q]
    conf_dir = %[7]q
    max_conf_num = 1
`, env.Path("containerd"), env.Path("run", "containerd"), ContainerdSocket(env),
		oci.PauseRef, image.RuncPath, image.CNIBinDir, CNIConfDir(env), hostsDir, registryAuthTOML(reg))
	// The directory stays as the other components' files want it; the
	// file is 0600 (it may hold credentials).
	if err := mkdirs(filepath.Dir(env.Path(containerdConfig))); err != nil {
		return err
	}
	return pki.WriteFile(env.Path(containerdConfig), []byte(conf), true)
}

// registryHostsDir is containerd's config_path: a directory per registry,
// named as image references name it (AnyRegistry's is "_default"),
// holding its hosts.toml and the CA files it names.
const registryHostsDir = "config/certs.d"

// writeRegistryHosts replaces dir by the hosts directories of r: a
// registry dropped from the config loses its directory. The new tree is
// written beside dir first, so dir is never half written.
func writeRegistryHosts(dir string, r node.Registries) error {
	files := registryHostsFiles(r)
	tmp := dir + ".new"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	for _, rel := range slices.Sorted(maps.Keys(files)) {
		p := filepath.Join(tmp, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, files[rel], 0o644); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// registryHostsFiles are the files of the hosts directories, by path
// relative to config_path: DIR/hosts.toml and DIR/ca-HOST.pem for a CA
// given inline. hosts.toml names such a CA relatively (containerd reads it
// beside hosts.toml), so the tree can be written elsewhere and moved.
//
// A registry gets a directory when it has a mirror entry, or a host
// config with a CA (for its own certificate). One that has neither keeps
// containerd's defaults, AnyRegistry's directory if there is one.
func registryHostsFiles(r node.Registries) map[string][]byte {
	regs := map[string]bool{}
	for k := range r.Mirrors {
		regs[k] = true
	}
	for k, c := range r.Configs {
		if c.TLS != nil {
			if k == node.DockerHubHost {
				k = node.DockerHub // the registry image references name
			}
			regs[k] = true
		}
	}
	files := map[string][]byte{}
	for reg := range regs {
		dir := reg
		if reg == node.AnyRegistry {
			dir = "_default"
		}
		hostsToml, cas := registryHostsTOML(reg, r)
		files[filepath.Join(dir, "hosts.toml")] = hostsToml
		for name, pem := range cas {
			files[filepath.Join(dir, name)] = pem
		}
	}
	return files
}

// registryHostsTOML is one registry's hosts.toml and the CA files it
// names (by file name). The hosts are the mirror's endpoints in order,
// then the registry itself (containerd's "server", always last); without
// the registry, the last endpoint is the server. Mirrors may pull and
// resolve tags, never take a push.
func registryHostsTOML(reg string, r node.Registries) ([]byte, map[string][]byte) {
	var endpoints []string
	upstream := true
	if m, ok := r.MirrorFor(reg); ok {
		endpoints, upstream = m.Endpoints, m.UsesUpstream()
	}
	cas := map[string][]byte{}
	// ca is the hosts.toml value for the CA of an endpoint's host.
	ca := func(endpoint string) string {
		u, err := url.Parse(endpoint)
		if err != nil {
			return "" // Validate refused it
		}
		c, ok := r.ConfigFor(u.Host)
		if !ok || c.TLS == nil {
			return ""
		}
		if c.TLS.CAFile != "" {
			return c.TLS.CAFile
		}
		name := "ca-" + strings.NewReplacer(":", "_", "[", "", "]", "").Replace(u.Host) + ".pem"
		cas[name] = []byte(c.TLS.CA)
		return name
	}
	var b strings.Builder
	b.WriteString("# Written by kiln at every start from the node config's registries; edits are lost.\n")
	b.WriteString("# containerd tries the [host] entries in order, then server.\n")
	hosts := endpoints
	switch {
	case upstream && reg != node.AnyRegistry:
		server := node.UpstreamURL(reg)
		fmt.Fprintf(&b, "server = %s\n", tomlString(server))
		if c := ca(server); c != "" {
			fmt.Fprintf(&b, "ca = %s\n", tomlString(c))
		}
	case upstream:
		// "_default": containerd puts the registry asked for last.
	case len(endpoints) > 0:
		last := endpoints[len(endpoints)-1]
		hosts = endpoints[:len(endpoints)-1]
		fmt.Fprintf(&b, "server = %s\ncapabilities = [\"pull\", \"resolve\"]\n", tomlString(last))
		if c := ca(last); c != "" {
			fmt.Fprintf(&b, "ca = %s\n", tomlString(c))
		}
	}
	for _, e := range hosts {
		fmt.Fprintf(&b, "\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", tomlString(e))
		if c := ca(e); c != "" {
			fmt.Fprintf(&b, "  ca = %s\n", tomlString(c))
		}
	}
	return []byte(b.String()), cas
}

// registryAuthTOML is the CRI plugin's registry.configs: the credentials
// per host containerd connects to (an endpoint's host:port). DockerHub's
// entry is written for DockerHubHost too, the host it connects to.
func registryAuthTOML(r node.Registries) string {
	hosts := map[string]bool{}
	for k, c := range r.Configs {
		if c.Auth == nil {
			continue
		}
		hosts[k] = true
		if k == node.DockerHub {
			hosts[node.DockerHubHost] = true
		}
	}
	var b strings.Builder
	for _, h := range slices.Sorted(maps.Keys(hosts)) {
		c, _ := r.ConfigFor(h)
		fmt.Fprintf(&b, "    [plugins.'io.containerd.cri.v1.images'.registry.configs.%s.auth]\n", tomlString(h))
		if c.Auth.IdentityToken != "" {
			fmt.Fprintf(&b, "      identitytoken = %s\n", tomlString(string(c.Auth.IdentityToken)))
			continue
		}
		fmt.Fprintf(&b, "      username = %s\n      password = %s\n", tomlString(c.Auth.Username), tomlString(string(c.Auth.Password)))
	}
	return b.String()
}

// tomlString is s as a TOML basic string. Go's %q is not one: it writes
// \x escapes, which TOML lacks.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteRune(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, c)
		default:
			b.WriteRune(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// checkRegistryCAFiles reads the CA files the registries name (paths on
// the node, so not checked with the config): a missing or wrong one is
// said now, not found by containerd at the first pull.
func checkRegistryCAFiles(r node.Registries) error {
	for _, k := range slices.Sorted(maps.Keys(r.Configs)) {
		t := r.Configs[k].TLS
		if t == nil || t.CAFile == "" {
			continue
		}
		data, err := pki.ReadFile(t.CAFile) // its error names the file
		if err == nil {
			if err = node.CheckCAPEM(data); err != nil {
				err = fmt.Errorf("%s: %w", t.CAFile, err)
			}
		}
		if err != nil {
			return fmt.Errorf("registries.configs[%s].tls.caFile: %v (a file on the node; or give the PEM itself as tls.ca)", bounded.Quote(k), err)
		}
	}
	return nil
}

// Ready is containerd answering on its socket: it listens only once its
// plugins are loaded.
func (Containerd) Ready(ctx context.Context, env *Env) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", ContainerdSocket(env))
	if err != nil {
		return err
	}
	return c.Close()
}

// ImportImages imports the image archives of image.ImagesDir into containerd once
// it runs: the sandbox (pause) image, CoreDNS, the test workload and the
// user's own. They need no registry; other images are pulled as the
// node config's registries say.
type ImportImages struct{}

var _ Component = ImportImages{}
var _ Conditional = ImportImages{}
var _ Task = ImportImages{}

func (ImportImages) Name() string                  { return node.ComponentImportImages }
func (ImportImages) Roles() []node.Role            { return []node.Role{node.RoleMaster, node.RoleWorker} }
func (ImportImages) Enabled(cfg *node.Config) bool { return cfg.RunsPods() }
func (ImportImages) DependsOn() []string           { return []string{node.ComponentContainerd} }
func (ImportImages) Prepare(*Env) error            { return nil }
func (ImportImages) Task()                         {}
func (ImportImages) Flags(env *Env) map[string]string {
	// The record lets a node with a state disk skip the archives its
	// containerd already holds (components/entry/images.go).
	return map[string]string{"address": ContainerdSocket(env), "dir": image.ImagesDir, "record": env.Path("images-imported.json")}
}

// mkdirs creates directories a component expects.
func mkdirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}
