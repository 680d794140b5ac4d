package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Step is one piece of the early root file system: a directory, a mount, a
// symlink, a cgroup tree. PID 1 walks a list of them and logs each failure;
// adding a mount is adding one value to earlyRoot.
type Step interface {
	Create() error
	String() string
}

// Optional steps may fail (a file system the kernel lacks): the failure is
// a warning.
type optional interface{ isOptional() bool }

// Dir is a directory with a mode (0o1777 and os.ModeSticky|0o777 both
// mean sticky).
type Dir struct {
	Path string
	Mode fs.FileMode
}

func (d Dir) Create() error {
	if err := os.MkdirAll(d.Path, d.Mode.Perm()); err != nil {
		return err
	}
	return os.Chmod(d.Path, goMode(d.Mode))
}

// goMode turns Unix set-id and sticky bits written as octal into Go's.
func goMode(m fs.FileMode) fs.FileMode {
	for _, b := range []struct{ unix, gomode fs.FileMode }{
		{0o4000, os.ModeSetuid}, {0o2000, os.ModeSetgid}, {0o1000, os.ModeSticky},
	} {
		if m&b.unix != 0 {
			m = m&^b.unix | b.gomode
		}
	}
	return m
}

func (d Dir) String() string { return fmt.Sprintf("dir %s (%s)", d.Path, d.Mode) }

// Symlink makes Link point at Target. An existing link is replaced.
type Symlink struct {
	Target string
	Link   string
}

func (s Symlink) Create() error {
	if cur, err := os.Readlink(s.Link); err == nil && cur == s.Target {
		return nil
	}
	_ = os.Remove(s.Link)
	return os.Symlink(s.Target, s.Link)
}

func (s Symlink) String() string { return fmt.Sprintf("symlink %s -> %s", s.Link, s.Target) }

// Mount mounts a file system on Target, creating Target (mode 0755) first.
// A target that already has a mount (EBUSY) is taken as done.
type Mount struct {
	Source string
	Target string
	FSType string
	Flags  uintptr
	Data   string
	// FallbackData, if set, is tried when the kernel rejects Data
	// (EINVAL: an option it does not know).
	FallbackData string
	// Optional mounts may fail: the file system is nice to have.
	Optional bool
}

func (m Mount) Create() error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return err
	}
	err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	if errors.Is(err, unix.EINVAL) && m.FallbackData != "" {
		err = unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.FallbackData)
	}
	if errors.Is(err, unix.EBUSY) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "mount " + m.FSType, Path: m.Target, Err: err}
	}
	return nil
}

func (m Mount) isOptional() bool { return m.Optional }

func (m Mount) String() string {
	opts := flagNames(m.Flags)
	if m.Data != "" {
		opts = append(opts, m.Data)
	}
	s := fmt.Sprintf("mount %s on %s type %s", m.Source, m.Target, m.FSType)
	if len(opts) > 0 {
		s += " (" + strings.Join(opts, ",") + ")"
	}
	return s
}

var mountFlagNames = []struct {
	flag uintptr
	name string
}{
	{unix.MS_RDONLY, "ro"},
	{unix.MS_NOSUID, "nosuid"},
	{unix.MS_NODEV, "nodev"},
	{unix.MS_NOEXEC, "noexec"},
	{unix.MS_NOATIME, "noatime"},
	{unix.MS_RELATIME, "relatime"},
}

func flagNames(f uintptr) []string {
	var out []string
	for _, n := range mountFlagNames {
		if f&n.flag != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// Paths of the early root.
const (
	CgroupMount = "/sys/fs/cgroup"
	// CgroupRoot is where the supervisor puts each component, in
	// CgroupRoot/<name>. Pods go in their own tree beside it
	// (/sys/fs/cgroup/kubepods).
	CgroupRoot = CgroupMount + "/kiln"
	// CgroupInit is PID 1's own cgroup: a leaf, so that CgroupRoot holds
	// no process and can delegate controllers to its children (cgroup v2's
	// "no internal processes" rule).
	CgroupInit = CgroupRoot + "/init"
)

// cgroupControllers are enabled for the children of the root and of
// CgroupRoot, where the kernel has them.
var cgroupControllers = []string{"cpuset", "cpu", "io", "memory", "hugetlb", "pids"}

const (
	nsd = unix.MS_NOSUID | unix.MS_NODEV
	all = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
)

// earlyRoot is what PID 1 mounts and creates before anything else, in
// order.
var earlyRoot = []Step{
	Mount{Source: "proc", Target: "/proc", FSType: "proc", Flags: all},
	Mount{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: all},
	Mount{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
	Mount{Source: "devpts", Target: "/dev/pts", FSType: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC, Data: "gid=5,mode=0620,ptmxmode=0666"},
	Mount{Source: "shm", Target: "/dev/shm", FSType: "tmpfs", Flags: nsd, Data: "mode=1777"},
	Symlink{Target: "/proc/self/fd", Link: "/dev/fd"},
	Symlink{Target: "/proc/self/fd/0", Link: "/dev/stdin"},
	Symlink{Target: "/proc/self/fd/1", Link: "/dev/stdout"},
	Symlink{Target: "/proc/self/fd/2", Link: "/dev/stderr"},
	Mount{Source: "run", Target: "/run", FSType: "tmpfs", Flags: nsd, Data: "mode=0755"},
	Mount{Source: "tmp", Target: "/tmp", FSType: "tmpfs", Flags: nsd, Data: "mode=1777"},
	Mount{Source: "cgroup2", Target: CgroupMount, FSType: "cgroup2", Flags: all, Data: "nsdelegate,memory_recursiveprot", FallbackData: "nsdelegate"},
	Mount{Source: "securityfs", Target: "/sys/kernel/security", FSType: "securityfs", Flags: all, Optional: true},
	Mount{Source: "bpf", Target: "/sys/fs/bpf", FSType: "bpf", Flags: all, Data: "mode=0700", Optional: true},
	Dir{Path: "/run/kiln", Mode: 0o755},
	Dir{Path: "/var/log", Mode: 0o755},
	Dir{Path: "/etc/kiln", Mode: 0o755},
	&CgroupTree{Mount: CgroupMount, Root: CgroupRoot, Init: CgroupInit, Controllers: cgroupControllers},
}

// CgroupTree delegates cgroup v2 controllers to a tree for the supervisor:
// the controllers present (of the wanted ones) are enabled in the root's
// cgroup.subtree_control (so kiln/ and a kubepods/ beside it both get them)
// and in Root's (so each component's Root/<name> gets them), and PID 1
// moves into the leaf Init, leaving Root without processes.
type CgroupTree struct {
	Mount       string
	Root        string
	Init        string
	Controllers []string
	// Enabled is what Create enabled.
	Enabled []string
}

func (c *CgroupTree) String() string {
	return fmt.Sprintf("cgroup tree %s (+%s), PID 1 in %s", c.Root, strings.Join(c.Controllers, " +"), c.Init)
}

func (c *CgroupTree) Create() error {
	b, err := os.ReadFile(filepath.Join(c.Mount, "cgroup.controllers"))
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, f := range strings.Fields(string(b)) {
		have[f] = true
	}
	var enable []string
	for _, ctl := range c.Controllers {
		if have[ctl] {
			enable = append(enable, "+"+ctl)
		}
	}
	c.Enabled = nil
	for _, e := range enable {
		c.Enabled = append(c.Enabled, e[1:])
	}
	ctl := strings.Join(enable, " ")
	if err := writeCgroup(filepath.Join(c.Mount, "cgroup.subtree_control"), ctl); err != nil {
		return err
	}
	for _, d := range []string{c.Root, c.Init} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// Root has no process of its own: PID 1 is about to go to Init.
	if err := writeCgroup(filepath.Join(c.Root, "cgroup.subtree_control"), ctl); err != nil {
		return err
	}
	return writeCgroup(filepath.Join(c.Init, "cgroup.procs"), fmt.Sprint(os.Getpid()))
}

func writeCgroup(path, v string) error {
	if v == "" {
		return nil
	}
	if err := os.WriteFile(path, []byte(v), 0); err != nil {
		return fmt.Errorf("write %q to %s: %w", v, path, err)
	}
	return nil
}

// createAll walks steps in order. Failures of optional steps are returned as
// warnings; the first failure of another step stops the walk.
func createAll(steps []Step) (warnings []string, err error) {
	for _, s := range steps {
		if e := s.Create(); e != nil {
			if o, ok := s.(optional); ok && o.isOptional() {
				warnings = append(warnings, fmt.Sprintf("%s: %v", s, e))
				continue
			}
			return warnings, fmt.Errorf("%s: %w", s, e)
		}
	}
	return warnings, nil
}
