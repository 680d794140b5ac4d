package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/cluster"
	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/builder"
	"kiln/pki"
	"kiln/qemu"
	"kiln/qemu/vmcluster"
)

// apiGuestPort is the kube-apiserver's port inside the guest.
const apiGuestPort = 6443

type runFlags struct {
	image, boot, serialLog string
	memory, cpus, apiPort  int
	uefi, egress           bool
	appendArgs             []string
	shutdownTimeout        time.Duration
}

// bootMethods are the values of --boot.
var bootMethods = []string{image.BootKernel, "iso", "qcow2", image.BootPXE}

func runCommand() *cobra.Command {
	f := runFlags{}
	c := &cobra.Command{
		Use:   "run [--image DIR]",
		Short: "Boot a built image in QEMU, console on this terminal",
		Long: `Boot an image directory made by "kiln build" in QEMU (KVM when /dev/kvm opens
and the CPU shows vmx or svm, otherwise TCG emulation, about 12 times
slower; KILN_ACCEL=kvm or tcg decides instead). The serial console is
copied to this terminal and to a log file (--serial-log, default
<image>/console.log).

Networking is QEMU's user mode with restrict=on: the guest reaches nothing
outside this machine. For a master, 127.0.0.1:<api-port> is forwarded to the
API server (guest port 6443) and <image>/admin.kubeconfig is written: the
cluster's admin kubeconfig pointing at that port.

--egress drops restrict=on: QEMU NATs the guest's connections (its DHCP
lease already names 10.0.2.2 as the router and 10.0.2.3 as the name
server), so containerd can pull from registries. The guest then reaches
anything this machine reaches: the internet, your LAN, and at 10.0.2.2 the
services listening on this machine's 127.0.0.1. The node's own
connections go out, and its pods' (the node masquerades them to its
address). Off by default.

Boot methods (--boot):
  kernel  direct boot of vmlinuz + initramfs.img with the cmdline file (fastest)
  iso     the ISO as a CD-ROM, BIOS or --uefi
  qcow2   the disk image, BIOS or --uefi. It is booted as it is, not through
          a throw-away overlay: the node's state (etcd, kubelet, images) persists
          from one run to the next, until the image is rebuilt
  pxe     network boot with QEMU's iPXE ROM from <image>/pxe over QEMU's
          built-in TFTP server

Ctrl-C (or SIGTERM) presses the ACPI power button so the node shuts down
cleanly; after --shutdown-timeout, or on a second Ctrl-C, QEMU is killed.`,
		Example: `  kiln run --image out/master
  kiln run --image out/worker --boot iso --uefi --memory 1536
  kiln run --image out/master --egress    # the node may reach the internet (and your LAN)
  kubectl --kubeconfig out/master/admin.kubeconfig get nodes`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			return runImage(c.Context(), c.OutOrStdout(), c.ErrOrStderr(), f, sigs)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.image, "image", "out/master", "image directory (kiln build --out)")
	fl.StringVar(&f.boot, "boot", "kernel", "boot method: "+strings.Join(bootMethods, ", "))
	fl.BoolVar(&f.uefi, "uefi", false, "boot with UEFI firmware (OVMF) instead of BIOS (iso, qcow2, pxe)")
	fl.IntVar(&f.memory, "memory", 0, fmt.Sprintf("guest RAM in MiB (default %d for a master, %d for a worker: both run pods)", vmcluster.DefaultMasterMemory, vmcluster.DefaultWorkerMemory))
	fl.IntVar(&f.cpus, "cpus", 2, "virtual CPUs")
	fl.IntVar(&f.apiPort, "api-port", apiGuestPort, "host port on 127.0.0.1 forwarded to a master's API server (0: any free port)")
	fl.StringVar(&f.serialLog, "serial-log", "", "serial console log file (default <image>/console.log)")
	fl.StringSliceVar(&f.appendArgs, "append", nil, "extra kernel command line arguments (--boot kernel only)")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 2*time.Minute, "how long the node may take to power off after Ctrl-C before QEMU is killed")
	fl.BoolVar(&f.egress, "egress", false, egressHelp)
	return c
}

// bootOptions returns the QEMU options that boot the image d with f.boot.
func bootOptions(f runFlags, d *builder.Dir) ([]qemu.Option, *qemu.UserNet, error) {
	var opts []qemu.Option
	net := &qemu.UserNet{Egress: f.egress}
	switch f.boot {
	case image.BootKernel:
		k, err := d.Kernel()
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, qemu.WithKernel(k.Vmlinuz), qemu.WithInitramfs(k.Initramfs),
			qemu.WithAppend(append(strings.Fields(k.Cmdline), f.appendArgs...)...))
	case "iso":
		iso, err := d.ISO()
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, qemu.WithCDROM(iso), qemu.WithBoot("d"))
	case "qcow2":
		disk, err := d.Qcow2()
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, qemu.WithDrive(qemu.Disk{Path: disk, Format: "qcow2"}), qemu.WithBoot("c"))
	case image.BootPXE:
		x, err := d.PXE()
		if err != nil {
			return nil, nil, err
		}
		net.TFTPRoot = x.Dir
		net.BootFile = filepath.Base(x.Script)
		opts = append(opts, qemu.WithBoot("n"))
	}
	if f.uefi {
		opts = append(opts, qemu.WithOVMF())
	}
	if d.Role == node.RoleMaster {
		net.Forwards = []qemu.Forward{{HostAddr: "127.0.0.1", HostPort: f.apiPort, GuestPort: apiGuestPort}}
	}
	return opts, net, nil
}

func (f runFlags) check() error {
	if !slices.Contains(bootMethods, f.boot) {
		return usageError{fmt.Errorf("--boot %q: want one of %s", f.boot, strings.Join(bootMethods, ", "))}
	}
	if f.uefi && f.boot == "kernel" {
		return usageError{errors.New("--uefi needs --boot iso, qcow2 or pxe (direct kernel boot has no firmware stage)")}
	}
	if len(f.appendArgs) > 0 && f.boot != "kernel" {
		return usageError{fmt.Errorf("--append works with --boot kernel only: the %s image carries its command line in its boot loader config (rebuild with kiln build --append)", f.boot)}
	}
	if f.memory < 0 || (f.memory > 0 && f.memory < 128) {
		return usageError{fmt.Errorf("--memory %d: want MiB, at least 128", f.memory)}
	}
	if f.cpus < 1 {
		return usageError{fmt.Errorf("--cpus %d: want at least 1", f.cpus)}
	}
	if f.apiPort < 0 || f.apiPort > 65535 {
		return usageError{fmt.Errorf("--api-port %d: want a TCP port (0 for any free one)", f.apiPort)}
	}
	if f.shutdownTimeout <= 0 {
		return usageError{fmt.Errorf("--shutdown-timeout %v: want a positive duration", f.shutdownTimeout)}
	}
	return nil
}

// runImage boots the image and waits for it to power off. The first value
// on sigs asks the guest to power off (ACPI), the second kills QEMU.
func runImage(ctx context.Context, stdout, stderr io.Writer, f runFlags, sigs <-chan os.Signal) error {
	if err := f.check(); err != nil {
		return err
	}
	m, err := builder.Open(f.image)
	if err != nil {
		return err
	}
	opts, net, err := bootOptions(f, m)
	if err != nil {
		return err
	}
	if f.memory == 0 {
		f.memory = vmcluster.DefaultWorkerMemory
		if m.Role == node.RoleMaster {
			f.memory = vmcluster.DefaultMasterMemory
		}
	}
	if need := m.SuggestedMemoryMiB(); f.memory < need {
		fmt.Fprintf(stderr, "kiln run: warning: %d MiB may be too little to unpack a %d MiB initramfs (want %d MiB or more)\n",
			f.memory, m.InitramfsRaw>>20, need)
	}
	if f.serialLog == "" {
		f.serialLog = filepath.Join(f.image, "console.log")
	}
	opts = append(opts,
		qemu.WithMemory(f.memory), qemu.WithCPUs(f.cpus),
		qemu.WithUserNetConfig(*net),
		qemu.WithSerialLog(f.serialLog),
		qemu.WithConsoleOutput(stdout),
	)
	accel := "KVM"
	if !qemu.KVMUsable() {
		accel = "TCG (no usable KVM: about 12x slower)"
	}
	firmware := "BIOS"
	if f.uefi {
		firmware = "UEFI"
	}
	if f.boot == "kernel" {
		firmware = "direct kernel boot"
	}
	network := "network closed (restrict=on)"
	if f.egress {
		network = "egress on: NAT to this machine's networks"
	}
	fmt.Fprintf(stderr, "kiln run: booting %s image %s from %s: --boot %s (%s), %d MiB, %d CPUs, %s, %s; console log %s; Ctrl-C powers it off\n",
		m.Role, m.ID, f.image, f.boot, firmware, f.memory, f.cpus, accel, network, f.serialLog)

	// Signals are handled below; ctx ending kills QEMU (qemu.Start).
	vm, err := qemu.Start(ctx, opts...)
	if err != nil {
		return err
	}
	defer vm.Kill()
	if m.Role == node.RoleMaster {
		port := vm.HostPort(apiGuestPort)
		kc, err := writeKubeconfig(&m.Manifest, f.image, port)
		if err != nil {
			vm.Kill()
			return err
		}
		fmt.Fprintf(stdout, "kubeconfig: %s\n", kc)
		fmt.Fprintf(stderr, "kiln run: API server forwarded from 127.0.0.1:%d\n", port)
	}

	var shutdownErr chan error
	stopShutdown := func() {}
	defer func() { stopShutdown() }()
	for {
		select {
		case <-vm.Done():
			if shutdownErr != nil {
				if err := <-shutdownErr; err != nil {
					return err
				}
			}
			if err := vm.Wait(); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "kiln run: the node powered off after %v\n", vm.Uptime().Round(time.Second))
			return nil
		case <-sigs:
			if shutdownErr == nil {
				fmt.Fprintf(stderr, "\nkiln run: pressing the power button; waiting up to %v for the node to power off (Ctrl-C again kills it)\n", f.shutdownTimeout)
				sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
				stopShutdown = cancel
				shutdownErr = make(chan error, 1)
				go func() { shutdownErr <- vm.Shutdown(sctx) }()
				continue
			}
			fmt.Fprintf(stderr, "\nkiln run: killing QEMU\n")
			vm.Kill()
			<-shutdownErr
			return errors.New("the node was killed before it powered off")
		}
	}
}

// writeKubeconfig writes <image>/admin.kubeconfig: the cluster's admin
// kubeconfig with the server at the forwarded port.
func writeKubeconfig(m *builder.Manifest, image string, port int) (string, error) {
	src := filepath.Join(m.ClusterDir, cluster.AdminKubeconfigFile)
	data, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("admin kubeconfig of the image's cluster: %w", err)
	}
	out, err := pki.RewriteKubeconfigServer(data, fmt.Sprintf("https://127.0.0.1:%d", port))
	if err != nil {
		return "", fmt.Errorf("%s: %w", src, err)
	}
	p := filepath.Join(image, cluster.AdminKubeconfigFile)
	if err := pki.WriteFile(p, out, true); err != nil {
		return "", err
	}
	return p, nil
}
