package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// VM is a running QEMU process.
type VM struct {
	cfg     Config
	args    []string
	cmd     *exec.Cmd
	console *Console
	stderr  *tailBuffer
	dir     string
	started time.Time
	kvm     bool

	exited  chan struct{}
	exitErr error // cmd.Wait's error, valid after exited is closed
	ended   time.Time
	logFile *os.File
}

// Start launches QEMU with the options and returns once the process runs.
// Cancelling ctx kills the VM (like exec.CommandContext). The guest's serial
// console is captured from the start: see Console and Expect. In a test
// binary it refuses a user network with egress (UserNet.Egress).
func Start(ctx context.Context, opts ...Option) (*VM, error) {
	cfg := Config{Machine: "q35", MemoryMB: 512, CPUs: 1, Binary: DefaultBinary}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if err := checkEgress(&cfg, testing.Testing()); err != nil {
		return nil, err
	}
	bin, err := lookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("qemu: %s not found (run scripts/install-deps.sh): %w", cfg.Binary, err)
	}
	for _, f := range []string{cfg.Kernel, cfg.Initrd, cfg.CDROM} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("qemu: %w", err)
			}
		}
	}
	kvm := false
	switch cfg.Accel {
	case "kvm":
		kvm = true
	case "", "auto":
		kvm = KVMUsable()
	}
	dir, err := os.MkdirTemp("", "kiln-qemu-")
	if err != nil {
		return nil, err
	}
	args, err := buildArgs(&cfg, dir, kvm)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	vm := &VM{cfg: cfg, args: append([]string{bin}, args...), dir: dir, kvm: kvm,
		stderr: &tailBuffer{max: 64 << 10}, exited: make(chan struct{})}

	var logW io.Writer
	if cfg.SerialLog != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.SerialLog), 0o755); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		f, err := os.Create(cfg.SerialLog)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		vm.logFile, logW = f, f
	}

	cmd := exec.Command(bin, args...)
	if cfg.NetNS != "" {
		// ip execs QEMU in the namespace: the pid is still QEMU's, and
		// the parent-death signal survives the exec.
		ip, err := lookPath("ip")
		if err != nil {
			vm.cleanup()
			return nil, fmt.Errorf("qemu: WithNetNS needs ip (iproute2): %w", err)
		}
		cmd = exec.Command(ip, append([]string{"netns", "exec", cfg.NetNS, bin}, args...)...)
		vm.args = append([]string{ip, "netns", "exec", cfg.NetNS}, vm.args...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // Ctrl-C on a terminal goes to us, not to QEMU
		Pdeathsig: syscall.SIGKILL, // no QEMU left behind if the test binary dies
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		vm.cleanup()
		return nil, err
	}
	vm.console = newConsole(stdin, logW, cfg.ConsoleOutput)
	cmd.Stdout = consoleWriter{vm.console}
	cmd.Stderr = vm.stderr
	vm.cmd = cmd
	vm.started = time.Now()
	if err := cmd.Start(); err != nil {
		vm.cleanup()
		return nil, fmt.Errorf("qemu: %w", err)
	}
	go func() {
		err := cmd.Wait()
		vm.ended = time.Now()
		vm.exitErr = err
		stdin.Close()
		vm.console.close(vm.describeExit(err))
		vm.cleanup()
		close(vm.exited)
	}()
	go func() {
		select {
		case <-ctx.Done():
			vm.Kill()
		case <-vm.exited:
		}
	}()
	return vm, nil
}

func (vm *VM) cleanup() {
	if vm.logFile != nil {
		vm.logFile.Close()
	}
	os.RemoveAll(vm.dir)
}

// describeExit turns cmd.Wait's error into one that carries QEMU's stderr.
func (vm *VM) describeExit(err error) error {
	if err == nil {
		return nil
	}
	s := strings.TrimSpace(vm.stderr.String())
	if strings.Contains(s, "initrd is too large") {
		return fmt.Errorf("qemu: %w: %w\nqemu stderr:\n%s", ErrInitrdTooLarge, err, s)
	}
	if s != "" {
		return fmt.Errorf("qemu: %w\nqemu stderr:\n%s", err, s)
	}
	return fmt.Errorf("qemu: %w", err)
}

// Args returns QEMU's command line, binary first (for logging).
func (vm *VM) Args() []string { return append([]string(nil), vm.args...) }

// CommandLine returns Args as one shell-quoted string.
func (vm *VM) CommandLine() string {
	q := make([]string, len(vm.args))
	for i, a := range vm.args {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\;&|<>()*?") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// KVM reports whether the VM runs with KVM (false: TCG emulation).
func (vm *VM) KVM() bool { return vm.kvm }

// PID is QEMU's process id.
func (vm *VM) PID() int { return vm.cmd.Process.Pid }

// StartTime is when QEMU was started.
func (vm *VM) StartTime() time.Time { return vm.started }

// Console returns the serial console.
func (vm *VM) Console() *Console { return vm.console }

// Expect is Console().Expect.
func (vm *VM) Expect(ctx context.Context, substr string, timeout time.Duration) (string, error) {
	return vm.console.Expect(ctx, substr, timeout)
}

// ExpectRegexp is Console().ExpectRegexp.
func (vm *VM) ExpectRegexp(ctx context.Context, re *regexp.Regexp, timeout time.Duration) (string, error) {
	return vm.console.ExpectRegexp(ctx, re, timeout)
}

// Stderr returns what QEMU itself printed on standard error (the last 64 KiB).
func (vm *VM) Stderr() string { return vm.stderr.String() }

// HostPort returns the host port forwarded to a guest TCP port by
// WithUserNet (useful with HostPort 0), or 0.
func (vm *VM) HostPort(guestPort int) int {
	for _, n := range vm.cfg.nics {
		for _, f := range n.user.Forwards {
			if f.GuestPort == guestPort && f.Proto == "tcp" {
				return f.HostPort
			}
		}
	}
	return 0
}

// Done is closed when QEMU has exited.
func (vm *VM) Done() <-chan struct{} { return vm.exited }

// Wait waits for QEMU to exit. It returns nil when QEMU exited cleanly and
// the console showed no failure; a failure seen on the console
// (ErrInitramfsUnpack, ErrKernelPanic: a panicking guest reboots with
// panic=-1 and -no-reboot makes QEMU exit 0) is returned even then;
// otherwise QEMU's exit error with its stderr.
func (vm *VM) Wait() error {
	<-vm.exited
	if f := vm.console.Failure(); f != nil {
		return fmt.Errorf("qemu: %w", f)
	}
	return vm.describeExit(vm.exitErr)
}

// Uptime is how long QEMU ran (so far, or until it exited).
func (vm *VM) Uptime() time.Duration {
	select {
	case <-vm.exited:
		return vm.ended.Sub(vm.started)
	default:
		return time.Since(vm.started)
	}
}

// Kill stops QEMU at once (SIGKILL) and waits for it. Killing a VM that has
// already exited is not an error.
func (vm *VM) Kill() error {
	select {
	case <-vm.exited:
		return nil
	default:
	}
	if err := vm.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-vm.exited
	return nil
}

// Shutdown asks the guest to power off (ACPI power button, via QMP
// system_powerdown) and waits for QEMU to exit. If the guest has not powered
// off when ctx ends, the VM is killed and an error says so.
func (vm *VM) Shutdown(ctx context.Context) error {
	select {
	case <-vm.exited:
		return nil
	default:
	}
	if _, err := vm.QMP(ctx, "system_powerdown", nil); err != nil {
		select {
		case <-vm.exited: // raced with the guest powering off
			return nil
		default:
		}
		vm.Kill()
		return fmt.Errorf("qemu: system_powerdown: %w (VM killed)", err)
	}
	select {
	case <-vm.exited:
		return nil
	case <-ctx.Done():
		vm.Kill()
		return fmt.Errorf("qemu: guest did not power off after ACPI powerdown (%w); VM killed", ctx.Err())
	}
}

// QMP runs one QMP command (e.g. "query-status", "system_powerdown") with
// optional arguments and returns its "return" value.
func (vm *VM) QMP(ctx context.Context, command string, arguments any) (json.RawMessage, error) {
	sock := filepath.Join(vm.dir, "qmp.sock")
	var d net.Dialer
	var conn net.Conn
	var err error
	// The socket appears shortly after QEMU starts.
	for i := 0; ; i++ {
		conn, err = d.DialContext(ctx, "unix", sock)
		if err == nil {
			break
		}
		select {
		case <-vm.exited:
			return nil, fmt.Errorf("qemu: QMP: %w", ErrExited)
		case <-ctx.Done():
			return nil, fmt.Errorf("qemu: QMP connect: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	r := bufio.NewReader(conn)
	type reply struct {
		QMP    json.RawMessage `json:"QMP"`
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
		Event string `json:"event"`
	}
	read := func() (*reply, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			var m reply
			if err := json.Unmarshal(line, &m); err != nil {
				return nil, fmt.Errorf("bad QMP message %q: %w", line, err)
			}
			if m.Event != "" || m.QMP != nil {
				continue // greeting or asynchronous event
			}
			return &m, nil
		}
	}
	send := func(cmd string, args any) (json.RawMessage, error) {
		msg := map[string]any{"execute": cmd}
		if args != nil {
			msg["arguments"] = args
		}
		b, _ := json.Marshal(msg)
		if _, err := conn.Write(append(b, '\n')); err != nil {
			return nil, err
		}
		m, err := read()
		if err != nil {
			return nil, err
		}
		if m.Error != nil {
			return nil, fmt.Errorf("%s: %s", m.Error.Class, m.Error.Desc)
		}
		return m.Return, nil
	}
	if _, err := send("qmp_capabilities", nil); err != nil {
		return nil, fmt.Errorf("qemu: QMP handshake: %w", err)
	}
	ret, err := send(command, arguments)
	if err != nil {
		return nil, fmt.Errorf("qemu: QMP %s: %w", command, err)
	}
	return ret, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
