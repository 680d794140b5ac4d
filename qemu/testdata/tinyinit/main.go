// Command tinyinit is a minimal PID 1 for the qemu package's tests: it
// greets, mounts /proc, prints the kernel command line and powers off (or,
// with kiln.test.hang on the command line, waits forever).
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	fmt.Println("kiln-test-init: hello")
	if err := os.MkdirAll("/proc", 0o555); err != nil {
		fmt.Println("kiln-test-init: mkdir /proc:", err)
	}
	if err := syscall.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		fmt.Println("kiln-test-init: mount /proc:", err)
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fmt.Println("kiln-test-init: read /proc/cmdline:", err)
	}
	fmt.Printf("kiln-test-init: cmdline: %s\n", strings.TrimSpace(string(cmdline)))
	if strings.Contains(string(cmdline), "kiln.test.hang") {
		fmt.Println("kiln-test-init: waiting forever")
		for {
			time.Sleep(time.Hour)
		}
	}
	fmt.Println("kiln-test-init: powering off")
	syscall.Sync()
	if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Println("kiln-test-init: reboot:", err)
	}
	// PID 1 must not exit: that panics the kernel.
	for {
		time.Sleep(time.Hour)
	}
}
