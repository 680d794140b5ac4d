package boot

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func event(typ, code uint16, value int32) []byte {
	b := make([]byte, inputEventSize)
	binary.LittleEndian.PutUint16(b[16:], typ)
	binary.LittleEndian.PutUint16(b[18:], code)
	binary.LittleEndian.PutUint32(b[20:], uint32(value))
	return b
}

func TestPowerButton(t *testing.T) {
	if !isPowerPress(event(evKey, keyPower, 1)) {
		t.Error("press not seen")
	}
	for _, e := range [][]byte{event(evKey, keyPower, 0), event(0, 0, 0), event(evKey, 30, 1), event(evKey, keyPower, 1)[:10]} {
		if isPowerPress(e) {
			t.Errorf("%v taken for a press", e)
		}
	}
	sys := t.TempDir()
	for name, dev := range map[string]string{"event0": "AT Translated Set 2 keyboard", "event2": "Power Button", "mouse0": "Power Button"} {
		os.MkdirAll(filepath.Join(sys, name, "device"), 0o755)
		os.WriteFile(filepath.Join(sys, name, "device", "name"), []byte(dev+"\n"), 0o644)
	}
	got := findPowerButtons(sys, "/dev/input")
	if len(got) != 1 || got[0] != "/dev/input/event2" {
		t.Errorf("power buttons %v", got)
	}
}

func TestSignalRequests(t *testing.T) {
	for sig, want := range map[unix.Signal]string{unix.SIGTERM: "power off", unix.SIGPWR: "power off", unix.SIGINT: "reboot"} {
		r, ok := signalRequest(sig)
		if !ok || r.action() != want {
			t.Errorf("%v: %+v %v, want %s", sig, r, ok, want)
		}
	}
	if _, ok := signalRequest(unix.SIGHUP); ok {
		t.Error("SIGHUP is a power request")
	}
	// Every signal that would kill or crash a Go program is caught.
	for _, s := range []unix.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGABRT} {
		found := false
		for _, h := range handledSignals {
			found = found || h == s
		}
		if !found {
			t.Errorf("%v is not handled", s)
		}
	}
}
