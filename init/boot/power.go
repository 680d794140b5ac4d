package boot

import (
	"kiln/internal/ctxutil"

	"context"
	"encoding/binary"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kiln/init/boot/console"
)

// powerRequest asks PID 1 to stop the node.
type powerRequest struct {
	Reboot bool
	Why    string // "power button", "SIGTERM", ...
	// Kexec, on a reboot, loads the kernel to start instead of the
	// firmware's boot (kiln upgrade's trial): called once the components
	// are gone and before the unmounts; an error is printed and the
	// firmware reboots.
	Kexec func() error
}

func (r powerRequest) action() string {
	if r.Reboot {
		return "reboot"
	}
	return "power off"
}

// handledSignals are the signals PID 1 catches. The kernel delivers to PID 1
// only signals it has a handler for, and the Go runtime has one for all of
// them: uncaught, SIGTERM, SIGINT and SIGHUP would make the runtime exit
// and SIGQUIT or SIGABRT make it crash, and PID 1 exiting panics the
// kernel.
var handledSignals = []os.Signal{
	unix.SIGTERM, unix.SIGPWR, unix.SIGUSR2, // power off
	unix.SIGINT,                                             // reboot: ctrl-alt-del (see disableCAD)
	unix.SIGQUIT,                                            // dump the goroutines to the console
	unix.SIGHUP, unix.SIGUSR1, unix.SIGABRT, unix.SIGSTKFLT, // ignored
}

// signalRequest maps a signal to a power request, if it is one.
func signalRequest(sig os.Signal) (powerRequest, bool) {
	s, _ := sig.(syscall.Signal)
	switch s {
	case unix.SIGTERM, unix.SIGPWR, unix.SIGUSR2:
		return powerRequest{Why: unix.SignalName(s)}, true
	case unix.SIGINT:
		return powerRequest{Reboot: true, Why: "SIGINT (ctrl-alt-del)"}, true
	}
	return powerRequest{}, false
}

// disableCAD makes ctrl-alt-del send SIGINT to PID 1 instead of rebooting
// at once.
func disableCAD() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
}

// watchSignals turns signals into power requests until stop is closed.
func watchSignals(con *console.Console, out chan<- powerRequest, stop <-chan struct{}) {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, handledSignals...)
	go guardLoop(context.Background(), con, "signals", func() error {
		for {
			select {
			case <-stop:
				return nil
			case sig := <-ch:
				if r, ok := signalRequest(sig); ok {
					send(out, r)
					continue
				}
				if sig == unix.SIGQUIT {
					buf := make([]byte, 1<<20)
					buf = buf[:runtime.Stack(buf, true)]
					con.Raw("kiln: SIGQUIT: goroutines of PID 1:\n" + string(buf) + "\n")
					continue
				}
				con.Stage("%s ignored", unix.SignalName(sig.(syscall.Signal)))
			}
		}
	})
}

// send delivers a request without ever blocking its sender.
func send(out chan<- powerRequest, r powerRequest) {
	select {
	case out <- r:
	default:
	}
}

// The power button is an input device: the ACPI "button" driver (a module
// in Debian's kernels, loaded from /etc/kiln/modules with "evdev") reports
// a press of the ACPI power button (QEMU's system_powerdown, a server's
// button, a hypervisor's "shut down") as KEY_POWER on the input device
// named "Power Button", which evdev exposes as /dev/input/eventN.
const (
	powerButtonName = "Power Button"
	evKey           = 0x01
	keyPower        = 116
	inputEventSize  = 24 // struct input_event on 64-bit: timeval, type, code, value
)

// findPowerButtons lists the event devices of power buttons.
func findPowerButtons(sysClassInput, devInput string) []string {
	ents, _ := os.ReadDir(sysClassInput)
	var out []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "event") {
			continue
		}
		name, err := os.ReadFile(filepath.Join(sysClassInput, e.Name(), "device", "name"))
		if err == nil && strings.TrimSpace(string(name)) == powerButtonName {
			out = append(out, filepath.Join(devInput, e.Name()))
		}
	}
	return out
}

// isPowerPress reports whether an input event is the power key going down.
func isPowerPress(ev []byte) bool {
	if len(ev) < inputEventSize {
		return false
	}
	typ := binary.LittleEndian.Uint16(ev[16:])
	code := binary.LittleEndian.Uint16(ev[18:])
	value := int32(binary.LittleEndian.Uint32(ev[20:]))
	return typ == evKey && code == keyPower && value == 1
}

// watchPowerButton waits (a few seconds: the driver binds while modules
// load) for the power button devices and turns each press into a power-off
// request. Without one, only signals can stop the node: it says so.
func watchPowerButton(ctx context.Context, con *console.Console, out chan<- powerRequest) {
	var devs []string
	for i := 0; i < 50 && len(devs) == 0; i++ {
		if devs = findPowerButtons("/sys/class/input", "/dev/input"); len(devs) == 0 {
			if ctxutil.Sleep(ctx, 100*time.Millisecond) != nil {
				return
			}
		}
	}
	if len(devs) == 0 {
		con.Warn("no ACPI power button (modules button and evdev): ACPI power-off will not work")
		return
	}
	for _, d := range devs {
		// Not ctx: the button stays wanted on the way down (a second
		// press skips the wait).
		go guardLoop(context.Background(), con, "power button "+d, func() error {
			f, err := os.Open(d)
			if err != nil {
				con.Warn("power button %s: %v", d, err)
				return nil
			}
			defer f.Close()
			buf := make([]byte, inputEventSize*16)
			for {
				n, err := io.ReadAtLeast(f, buf, inputEventSize)
				if err != nil {
					con.Warn("power button %s: %v", d, err)
					return nil
				}
				for off := 0; off+inputEventSize <= n; off += inputEventSize {
					if isPowerPress(buf[off : off+inputEventSize]) {
						send(out, powerRequest{Why: "power button"})
					}
				}
			}
		})
	}
}
