package boot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEarlyRootStrings(t *testing.T) {
	var got []string
	for _, s := range earlyRoot {
		got = append(got, s.String())
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{
		"mount proc on /proc type proc (nosuid,nodev,noexec)",
		"mount devtmpfs on /dev type devtmpfs (nosuid,mode=0755)",
		"mount cgroup2 on /sys/fs/cgroup type cgroup2 (nosuid,nodev,noexec,nsdelegate,memory_recursiveprot)",
		"mount run on /run type tmpfs (nosuid,nodev,mode=0755)",
		"mount tmp on /tmp type tmpfs (nosuid,nodev,mode=1777)",
		"symlink /dev/fd -> /proc/self/fd",
		"cgroup tree /sys/fs/cgroup/kiln (+cpuset +cpu +io +memory +hugetlb +pids), PID 1 in /sys/fs/cgroup/kiln/init",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("early root lacks %q:\n%s", want, all)
		}
	}
	// proc before sys before dev; cgroup2 mounted before its tree is made.
	index := func(s string) int {
		for i, g := range got {
			if strings.Contains(g, s) {
				return i
			}
		}
		return -1
	}
	if !(index("on /proc ") < index("on /sys ") && index("on /sys ") < index("on /dev ") &&
		index("on /dev ") < index("on /dev/pts ") && index("type cgroup2") < index("cgroup tree")) {
		t.Errorf("early root out of order:\n%s", all)
	}
}

type fakeStep struct {
	name string
	err  error
	opt  bool
	ran  *[]string
}

func (f fakeStep) Create() error    { *f.ran = append(*f.ran, f.name); return f.err }
func (f fakeStep) String() string   { return f.name }
func (f fakeStep) isOptional() bool { return f.opt }

func TestCreateAll(t *testing.T) {
	var ran []string
	warnings, err := createAll([]Step{
		fakeStep{name: "a", ran: &ran},
		fakeStep{name: "b", err: errors.New("no bpf"), opt: true, ran: &ran},
		fakeStep{name: "c", err: errors.New("boom"), ran: &ran},
		fakeStep{name: "d", ran: &ran},
	})
	if strings.Join(ran, "") != "abc" {
		t.Errorf("ran %v, want a b c (stop at the first required failure)", ran)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "no bpf") {
		t.Errorf("warnings %v", warnings)
	}
	if err == nil || !strings.Contains(err.Error(), "c: boom") {
		t.Errorf("error %v", err)
	}
}

func TestDirAndSymlink(t *testing.T) {
	d := t.TempDir()
	if err := (Dir{Path: filepath.Join(d, "a/b"), Mode: 0o1777}).Create(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(d, "a/b")); fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("mode %v", fi.Mode())
	}
	l := Symlink{Target: "/proc/self/fd", Link: filepath.Join(d, "fd")}
	for i := 0; i < 2; i++ { // twice: idempotent
		if err := l.Create(); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := os.Readlink(l.Link); got != "/proc/self/fd" {
		t.Errorf("link to %q", got)
	}
}

func TestMountinfo(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(p, []byte(`1 1 0:2 / / rw - rootfs rootfs rw,size=239444k
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
30 1 0:26 / /var/lib\040data rw,relatime shared:1 - ext4 /dev/vda rw
`), 0o644)
	if fs, err := rootFSType(p); err != nil || fs != "rootfs" {
		t.Errorf("root %q %v", fs, err)
	}
	os.WriteFile(p, []byte("1 1 0:2 / / rw - rootfs rootfs rw\n40 1 0:30 / / rw - tmpfs root rw\n"), 0o644)
	if fs, _ := rootFSType(p); fs != "tmpfs" {
		t.Errorf("root after the switch: %q, want the last mount on /", fs)
	}
	m, ok := parseMountinfo(`30 1 0:26 / /var/lib\040data rw,relatime shared:1 - ext4 /dev/vda rw`)
	if !ok || m.Target != "/var/lib data" || m.FSType != "ext4" || m.Source != "/dev/vda" {
		t.Errorf("%+v %v", m, ok)
	}
	if _, ok := parseMountinfo("garbage"); ok {
		t.Error("garbage parsed")
	}
}
