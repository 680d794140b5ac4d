// Command testinit stands in for kiln-node in the image builder's tests: as
// PID 1 it reports how it was booted (kiln.boot= from /proc/cmdline), checks
// what the builder put in the image (node config, modules, tools, the state
// partition) and powers off.
package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func say(format string, args ...any) { fmt.Printf("kiln-test-init: "+format+"\n", args...) }

func main() {
	for _, m := range []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if err := syscall.Mount(m.src, m.dir, m.fs, 0, ""); err != nil {
			say("mount %s: %v", m.dir, err)
		}
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	boot := "unknown"
	for _, f := range strings.Fields(string(cmdline)) {
		if strings.HasPrefix(f, "kiln.boot=") {
			boot = f
		}
	}
	say("booted via %s", boot)
	say("cmdline: %s", strings.TrimSpace(string(cmdline)))

	role := "?"
	if cfg, err := os.ReadFile("/etc/kiln/config.yaml"); err == nil {
		for _, l := range strings.Split(string(cfg), "\n") {
			if v, ok := strings.CutPrefix(l, "role: "); ok {
				role = strings.TrimSpace(v)
			}
		}
	} else {
		say("config: %v", err)
	}
	osName := ""
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "NAME="); ok {
				osName = strings.Trim(v, `"`)
			}
		}
	}
	say("role=%s os=%s", role, osName)

	loadModules()
	checkTools()
	if strings.HasPrefix(boot, "kiln.boot=qcow2") {
		findState()
	}

	if strings.Contains(string(cmdline), "kiln.test.powerbutton") {
		waitPowerButton()
	}
	say("powering off")
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

func release() string {
	var u syscall.Utsname
	syscall.Uname(&u)
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

func modName(p string) string {
	return strings.ReplaceAll(strings.TrimSuffix(path.Base(p), ".ko"), "-", "_")
}

// loadModules loads /etc/kiln/modules in order with finit_module.
func loadModules() {
	dir := filepath.Join("/lib/modules", release())
	dep, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		say("modules: %v", err)
		return
	}
	files := map[string]string{}
	for _, l := range strings.Split(string(dep), "\n") {
		if p, _, ok := strings.Cut(l, ":"); ok {
			files[modName(p)] = filepath.Join(dir, p)
		}
	}
	list, err := os.ReadFile("/etc/kiln/modules")
	if err != nil {
		say("modules: %v", err)
		return
	}
	names := strings.Fields(string(list))
	loaded, failed := 0, []string{}
	for _, n := range names {
		f, err := os.Open(files[n])
		if err != nil {
			failed = append(failed, n+": "+err.Error())
			continue
		}
		params, _ := syscall.BytePtrFromString("")
		_, _, errno := syscall.Syscall(sysFinitModule, f.Fd(), uintptr(unsafe.Pointer(params)), 0)
		f.Close()
		if errno != 0 && errno != syscall.EEXIST {
			failed = append(failed, n+": "+errno.Error())
			continue
		}
		loaded++
	}
	say("modules loaded %d/%d", loaded, len(names))
	for _, f := range failed {
		say("module failed: %s", f)
	}
}

// checkTools runs each tool in /etc/kiln/tools with its version flag: the
// dynamic loader and libraries must be in the image.
func checkTools() {
	list, err := os.ReadFile("/etc/kiln/tools")
	if err != nil {
		say("tools: %v", err)
		return
	}
	for _, t := range strings.Fields(string(list)) {
		flag := "-V"
		if path.Base(t) == "nft" {
			flag = "-v"
		}
		out, err := exec.Command(t, flag).CombinedOutput()
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		if err != nil {
			say("tool %s failed: %v: %s", t, err, first)
			continue
		}
		say("tool %s ok: %s", t, first)
	}
}

// findState looks for the ext4 file system labelled kiln-state.
func findState() {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir("/sys/class/block")
		for _, e := range ents {
			f, err := os.Open("/dev/" + e.Name())
			if err != nil {
				continue
			}
			sb := make([]byte, 1024)
			_, err = f.ReadAt(sb, 1024)
			f.Close()
			if err != nil || sb[0x38] != 0x53 || sb[0x39] != 0xef { // ext2/3/4 magic
				continue
			}
			label := string(bytes.TrimRight(sb[0x78:0x88], "\x00"))
			if label == "kiln-state" {
				size, _ := os.ReadFile("/sys/class/block/" + e.Name() + "/size")
				say("state partition %s label %s, %s sectors", e.Name(), label, strings.TrimSpace(string(size)))
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	say("no kiln-state file system found")
}

// waitPowerButton waits for the ACPI power button (QEMU's system_powerdown)
// the way PID 1 should: the button module reports it as KEY_POWER on the
// input device named "Power Button" (evdev: /dev/input/eventN).
func waitPowerButton() {
	var dev string
	for i := 0; i < 50 && dev == ""; i++ {
		ents, _ := os.ReadDir("/sys/class/input")
		for _, e := range ents {
			name, _ := os.ReadFile("/sys/class/input/" + e.Name() + "/device/name")
			if strings.HasPrefix(e.Name(), "event") && strings.TrimSpace(string(name)) == "Power Button" {
				dev = "/dev/input/" + e.Name()
			}
		}
		if dev == "" {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if dev == "" {
		say("no power button input device")
		return
	}
	f, err := os.Open(dev)
	if err != nil {
		say("power button: %v", err)
		return
	}
	defer f.Close()
	say("waiting for the power button on %s", dev)
	ev := make([]byte, 24) // struct input_event on 64-bit: timeval, type, code, value
	for {
		if _, err := f.Read(ev); err != nil {
			say("power button: %v", err)
			return
		}
		typ := uint16(ev[16]) | uint16(ev[17])<<8
		code := uint16(ev[18]) | uint16(ev[19])<<8
		if typ == 1 && code == 116 && ev[20] == 1 { // EV_KEY, KEY_POWER, pressed
			say("power button pressed")
			return
		}
	}
}

// sysFinitModule is finit_module(2) on linux/amd64 (the syscall package
// predates it).
const sysFinitModule = 313
