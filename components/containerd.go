package components

import (
	"context"
	"fmt"
	"net"
	"os"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/oci"
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
	conf := fmt.Sprintf(`# Written by kiln at every start; edits are lost.
version = 3
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  # Images are imported at boot, never pulled; the sandbox image is pinned
  # so that image garbage collection never removes it.
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[4]q

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
		oci.PauseRef, image.RuncPath, image.CNIBinDir, CNIConfDir(env))
	return pki.WriteFile(env.Path(containerdConfig), []byte(conf), false)
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
// user's own. Nothing is pulled from a registry.
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
