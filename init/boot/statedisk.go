package boot

import (
	"kiln/internal/ctxutil"

	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/init/boot/blkdev"
	"kiln/init/boot/console"
)

const (
	// StateMount is where the state disk (or a tmpfs) is mounted.
	StateMount = "/var/lib"
	// DataDir is kiln's data directory, handed to the role as Node.DataDir.
	DataDir = StateMount + "/kiln"
	// deviceWait bounds the wait for the state disk to appear.
	deviceWait = 10 * time.Second
)

// diskAction is what to do with a state disk, from what is on it.
type diskAction int

const (
	diskMount  diskAction = iota // an ext4 file system: mount it
	diskFormat                   // blank, and formatting is allowed
)

// decideDisk says what to do with a device given its probe. The errors
// name the device and say what would be accepted: PID 1 never formats a
// disk that holds anything.
func decideDisk(dev string, p blkdev.Probe, policy node.Format) (diskAction, error) {
	switch {
	case p.Type == "ext4":
		return diskMount, nil
	case p.Blank() && policy == node.FormatAuto:
		return diskFormat, nil
	case p.Blank():
		return 0, fmt.Errorf("state disk %s is blank and storage.format is %q: format it (mke2fs -t ext4 -L %s %s) or set storage.format: auto", dev, policy, image.StateLabel, dev)
	}
	return 0, fmt.Errorf("state disk %s holds %s, not ext4: refusing to format it (wipe it first, e.g. wipefs -a %s, or point storage.stateDisk at another device)", dev, p, dev)
}

// findStateDisk waits for the configured device: a path to appear, or a
// block device with the label.
func findStateDisk(ctx context.Context, s node.Storage) (string, error) {
	deadline := time.Now().Add(deviceWait)
	for {
		if l := s.Label(); l != "" {
			found := blkdev.FindByLabel(blkdev.List("/sys/class/block", "/dev"), l)
			if len(found) > 0 {
				return found[0].Path, nil
			}
		} else if fi, err := os.Stat(s.StateDisk); err == nil {
			if fi.Mode()&os.ModeDevice == 0 {
				return "", fmt.Errorf("storage.stateDisk %s is not a block device", s.StateDisk)
			}
			return s.StateDisk, nil
		}
		if time.Now().After(deadline) {
			var names []string
			for _, d := range blkdev.List("/sys/class/block", "/dev") {
				names = append(names, d.Path)
			}
			if len(names) == 0 {
				names = []string{"none"}
			}
			return "", fmt.Errorf("storage.stateDisk %s: not found after %s (block devices: %s)", s.StateDisk, deviceWait, strings.Join(names, ", "))
		}
		if err := ctxutil.Sleep(ctx, 200*time.Millisecond); err != nil {
			return "", err
		}
	}
}

// setupStorage mounts the state disk on /var/lib (formatting a blank one
// when allowed), or a tmpfs when the node is diskless, and creates the data
// directory. It returns a description for the console.
func setupStorage(ctx context.Context, con *console.Console, s node.Storage) (string, error) {
	if s.StateDisk == "" {
		if err := (Mount{Source: "state", Target: StateMount, FSType: "tmpfs", Flags: nsd, Data: "mode=0755"}).Create(); err != nil {
			return "", err
		}
		return "diskless: tmpfs on " + StateMount + " (state is lost at power-off)", mkdirData()
	}
	dev, err := findStateDisk(ctx, s)
	if err != nil {
		return "", err
	}
	p, err := blkdev.ProbeDevice(dev)
	if err != nil {
		return "", fmt.Errorf("state disk %s: %w", dev, err)
	}
	action, err := decideDisk(dev, p, s.FormatPolicy())
	if err != nil {
		return "", err
	}
	how := "mounted"
	switch action {
	case diskFormat:
		con.Stage("storage: %s is blank: formatting it (ext4, label %s)", dev, image.StateLabel)
		start := time.Now()
		if err := runTool(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-L", image.StateLabel, dev); err != nil {
			return "", fmt.Errorf("state disk %s: %w", dev, err)
		}
		how = fmt.Sprintf("formatted in %.1fs and mounted", time.Since(start).Seconds())
	case diskMount:
		if err := checkFS(ctx, con, dev); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(StateMount, 0o755); err != nil {
		return "", err
	}
	if err := unix.Mount(dev, StateMount, "ext4", 0, ""); err != nil {
		return "", fmt.Errorf("state disk %s: mount on %s: %w", dev, StateMount, err)
	}
	if resetRequested(DataDir) {
		// kiln reset --node: the operator confirmed with the node's
		// name; that is the consent storage.format: auto gives for a
		// blank disk. Nothing has used the disk yet this boot.
		con.Stage("storage: a reset was requested (kiln reset): formatting %s (ext4, label %s)", dev, image.StateLabel)
		start := time.Now()
		if err := unix.Unmount(StateMount, 0); err != nil {
			return "", fmt.Errorf("state disk %s: unmounting it for the reset: %w", dev, err)
		}
		if err := runTool(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-L", image.StateLabel, dev); err != nil {
			return "", fmt.Errorf("state disk %s: reset: %w", dev, err)
		}
		if err := unix.Mount(dev, StateMount, "ext4", 0, ""); err != nil {
			return "", fmt.Errorf("state disk %s: mount on %s after the reset: %w", dev, StateMount, err)
		}
		how = fmt.Sprintf("reset (formatted in %.1fs) and mounted", time.Since(start).Seconds())
	}
	return fmt.Sprintf("%s %s on %s", dev, how, StateMount), mkdirData()
}

// resetRequested reports whether the node API's reset left its marker in
// the data directory (nodeapi.PathReset).
func resetRequested(dataDir string) bool {
	_, err := os.Lstat(filepath.Join(dataDir, nodeapi.ResetMarker))
	return err == nil
}

func mkdirData() error { return os.MkdirAll(DataDir, 0o755) }

// checkFS runs e2fsck -p when the image has it: a power cut leaves a
// journal to replay, which mount does too, but other damage only fsck
// repairs. Errors it cannot repair are a warning; the mount decides.
func checkFS(ctx context.Context, con *console.Console, dev string) error {
	if _, err := lookTool("e2fsck"); err != nil {
		return nil
	}
	out, err := toolOutput(ctx, "e2fsck", "-p", dev)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() < 4:
		con.Stage("storage: e2fsck repaired %s: %s", dev, console.OneLine(out))
	default:
		con.Warn("storage: e2fsck %s: %v: %s", dev, err, console.OneLine(out))
	}
	return nil
}

// toolDirs are searched after $PATH for the tools the image ships.
var toolDirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range toolDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not in the image (looked in $PATH and %s)", name, strings.Join(toolDirs, ", "))
}

func toolOutput(ctx context.Context, name string, args ...string) (string, error) {
	p, err := lookTool(name)
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, p, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func runTool(ctx context.Context, name string, args ...string) error {
	out, err := toolOutput(ctx, name, args...)
	if err != nil {
		if out != "" {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, console.OneLine(out))
		}
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}
