// Package vmcluster boots a kiln cluster in QEMU on one host: one or more
// masters and N workers on a private L2 (qemu.Hub), each VM given its node
// config on a config drive, the masters' API forwarded to the host (through
// a host-side endpoint that fails over between masters when there are
// several). It is what
// "kiln cluster up" runs and what the VM tests use. It talks to the API
// with net/http and the cluster's admin certificate: the host CLI links no
// Kubernetes code.
//
// The VMs reach nothing outside unless Options.Egress says so (kiln cluster
// up --egress, a user's choice; no test sets it): then every node has a
// QEMU user network without restrict=on as its default route.
package vmcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"kiln/configs/cluster"
	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
	"kiln/images/builder"
	"kiln/internal/nodeclient"
	"kiln/pki"
	"kiln/qemu"
)

// The private L2: master M is .9+M (the first .10), worker N is
// .9+MASTERS+N (.10+N with one master). It must stay out of the cluster's
// service and pod ranges (10.96.0.0/12, 10.244.0.0/16 by default):
// kube-proxy drops traffic to unallocated service IPs.
const (
	subnetPrefix  = "10.120.0."
	masterHost    = 10
	apiGuestPort  = 6443
	userNetGuest  = "10.0.2.15/24" // QEMU user networking's guest address
	MasterName    = "kiln-master"  // the first master
	masterNameFmt = "kiln-master-%d"
	workerNameFmt = "kiln-worker-%d"
	// MaxMasters bounds --masters: etcd is meant for 3 or 5 members, 7
	// at most.
	MaxMasters = 7
)

// With Options.Egress, QEMU's NAT router and DNS forwarder on the user
// network: every node's default route and name server.
const (
	userNetGateway = "10.0.2.2"
	userNetDNS     = "10.0.2.3"
)

// MasterNameOf is the name of master i (1-based): kiln-master, then
// kiln-master-2, kiln-master-3, …
func MasterNameOf(i int) string {
	if i <= 1 {
		return MasterName
	}
	return fmt.Sprintf(masterNameFmt, i)
}

// Guest memory in MiB: the master runs the control plane and pods, a
// worker pods only.
const (
	DefaultMasterMemory = 3072
	DefaultWorkerMemory = 1536
)

// Options say what to boot.
type Options struct {
	MasterImage string // kiln build --out of the master (default out/master)
	WorkerImage string // of the workers (default out/worker)
	ClusterDir  string // the cluster directory both were built from (default out/cluster)
	StateDir    string // console logs, config drives, kubeconfig (default out/cluster-vms)
	// Masters is the number of masters (default 1). The first starts
	// etcd, the others join it; with more than one, the API on the host
	// is an endpoint that fails over between them.
	Masters int
	Workers int
	// Memory in MiB; defaults DefaultMasterMemory and DefaultWorkerMemory.
	MasterMemory, WorkerMemory int
	CPUs                       int // per VM, default 2
	// APIPort is the host port (127.0.0.1) forwarded to the master's API
	// server; 0 picks a free one.
	APIPort int
	// Later names nodes Up prepares but does not boot: Boot starts them
	// (a cluster that grows, masters started together on a running one).
	Later []string
	// MasterStateDisk gives each master a blank state disk of this many
	// MiB (a sparse file beside its console log), formatted at its first
	// boot: its etcd and snapshots outlive a power-off. 0: diskless
	// masters, which start afresh at every boot.
	MasterStateDisk int
	// WorkerStateDisk gives each worker a blank state disk of this many
	// MiB the same way: its containerd store and its pods' local
	// volumes (StorageClass local) outlive a reboot. 0: diskless.
	WorkerStateDisk int
	// VIP is the API's virtual IP (controlPlane.vip of every node), with
	// several masters: an address of the cluster's L2 below the nodes'
	// (DefaultVIP, 10.120.0.5); "" for none. One master at a time holds
	// it; the workers' API load balancers have it as a seed, and the host
	// endpoint sends each connection to the master that holds it (the
	// host cannot reach the L2 itself; it asks each master's node API).
	VIP string
	// Disks boots every node from a disk of its own: a copy-on-write
	// overlay (beside its console log) of its role's qcow2 image (kiln
	// build --format qcow2), as a server boots its disk. Its state is on
	// the disk's state partition (MasterStateDisk and WorkerStateDisk
	// do not apply) and its boot partition has the slots kiln upgrade
	// writes. Append does not apply either: the disk's bootloader has its
	// command line.
	Disks bool
	// Append adds kernel arguments to every VM.
	Append []string
	// Progress receives one line per step.
	Progress io.Writer
	// GuestForwards are added to every master's user network (eth1,
	// restrict=on kept unless Egress): a master's only way out, each to
	// one program on the host (a test registry on the host's loopback,
	// through qemu.ProxyCommand). Without Egress or WorkerGuestForwards
	// the workers' only NIC is the cluster's L2.
	GuestForwards []qemu.GuestForward
	// WorkerGuestForwards gives every worker the GuestForwards too, on
	// a user network of its own (eth1, restrict=on, no default route:
	// only the forwards' addresses, on eth1's subnet, are reached
	// through it): pods on workers pull from the test registries
	// (tests/conformance).
	WorkerGuestForwards bool
	// Egress gives every node a way out through QEMU's NAT: the masters'
	// user network (eth1) loses restrict=on, each worker gets one of its
	// own (eth1, no forwards), and every node's config makes eth1 its
	// default route (via 10.0.2.2) and QEMU's DNS forwarder (10.0.2.3)
	// its name server. The VMs then reach whatever the host reaches: the
	// internet, the host's LAN, and the host's own loopback services at
	// 10.0.2.2. Off by default; for a user who asks (kiln cluster up
	// --egress), never for tests (qemu.Start refuses it in a test
	// binary).
	Egress bool
	// Registries is the registries section of every node's config
	// layer (its config drive, 0600 as it holds the node's secret);
	// nil writes none, and the images' own configs stand.
	Registries *node.Registries
}

func (o *Options) defaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.MasterImage, "out/master")
	def(&o.WorkerImage, "out/worker")
	def(&o.ClusterDir, "out/cluster")
	def(&o.StateDir, "out/cluster-vms")
	if o.MasterMemory == 0 {
		o.MasterMemory = DefaultMasterMemory
	}
	if o.WorkerMemory == 0 {
		o.WorkerMemory = DefaultWorkerMemory
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.Masters == 0 {
		o.Masters = 1
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Node is one VM of the cluster.
type Node struct {
	Name, Address, MAC string
	Role               node.Role
	ConsoleLog         string
	// Hostname is the node name the machine asks for: its Name, unless it
	// was booted to claim another's (AddWorker).
	Hostname string
	// NodeAPIPort is the host port (127.0.0.1) forwarded to a master's
	// node API (kiln status --node, kiln etcd); 0 on workers, whose only
	// network is the cluster's L2.
	NodeAPIPort int
	image       *builder.Dir // what it boots
	secret      string       // its node secret (workers)
	mu          sync.Mutex
	vm          *qemu.VM
	opts        []qemu.Option
	holdsVIP    bool // at the host's last look (watchVIP)
}

// VM is the node's running QEMU (a new one after Restart).
func (n *Node) VM() *qemu.VM {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.vm
}

// APIHostPort is the host port (127.0.0.1) forwarded to a master's own
// API server, 0 when it is not running.
func (n *Node) APIHostPort() int {
	vm := n.VM()
	if vm == nil || n.Role != node.RoleMaster {
		return 0
	}
	return vm.HostPort(apiGuestPort)
}

// Cluster is a booted set of VMs.
type Cluster struct {
	Nodes      []*Node
	APIPort    int
	Kubeconfig string // admin kubeconfig for the forwarded API
	hub        *qemu.Hub
	endpoint   *endpoint // the host's API endpoint with several masters
	nodeAPI    *nodeclient.Client
	stopVIP    context.CancelFunc // ends watchVIP
	opts       Options
	api        *Client
	started    time.Time
	ctx        context.Context
	// disksMade are the nodes whose disk (Options.Disks) this cluster
	// made: a node's disk is new at Up (its image may have been rebuilt
	// under an old overlay) and kept across its reboots after.
	disksMade map[string]bool
}

// Up checks the images and boots every VM (it does not wait for them; see
// WaitReady). Close stops them.
func Up(ctx context.Context, o Options) (*Cluster, error) {
	o.defaults()
	master, err := openImage(o.MasterImage, node.RoleMaster)
	if err != nil {
		return nil, err
	}
	worker, err := openImage(o.WorkerImage, node.RoleWorker)
	if err != nil {
		return nil, err
	}
	if o.Workers < 0 || o.Workers > 200 {
		return nil, fmt.Errorf("workers: %d is not between 0 and 200", o.Workers)
	}
	if o.Masters < 1 || o.Masters > MaxMasters {
		return nil, fmt.Errorf("masters: %d is not between 1 and %d (etcd wants an odd number: 1, 3 or 5)", o.Masters, MaxMasters)
	}
	if err := checkVIP(&o); err != nil {
		return nil, err
	}
	if o.Registries != nil {
		if err := o.Registries.Validate(); err != nil {
			return nil, err
		}
	}
	cl, err := cluster.Load(o.ClusterDir)
	if err != nil {
		return nil, err
	}
	nodeAPI, err := nodeclient.FromKubeconfig(cl.Paths().AdminKubeconfig)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		return nil, err
	}
	if o.APIPort != 0 {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", o.APIPort))
		if err != nil {
			return nil, fmt.Errorf("API port 127.0.0.1:%d is not free (%v): stop what uses it (another cluster? kiln cluster down) or choose another port", o.APIPort, err)
		}
		ln.Close()
	}
	hub, err := qemu.NewHub()
	if err != nil {
		return nil, err
	}
	c := &Cluster{hub: hub, nodeAPI: nodeAPI, opts: o, started: time.Now(), ctx: ctx}
	var nodes []*Node
	for i := 1; i <= o.Masters; i++ {
		nodes = append(nodes, &Node{Name: MasterNameOf(i), Role: node.RoleMaster, image: master, Address: fmt.Sprintf("%s%d", subnetPrefix, masterHost+i-1)})
	}
	for i := 1; i <= o.Workers; i++ {
		nodes = append(nodes, &Node{Name: fmt.Sprintf(workerNameFmt, i), Role: node.RoleWorker, image: worker, Address: fmt.Sprintf("%s%d", subnetPrefix, masterHost+o.Masters-1+i)})
	}
	c.Nodes = nodes
	for i, n := range nodes {
		n.MAC = fmt.Sprintf("52:54:00:99:00:%02x", masterHost+i)
		n.ConsoleLog = filepath.Join(o.StateDir, n.Name+".console.log")
		if err := c.prepare(n); err != nil {
			hub.Close()
			return nil, err
		}
	}
	if o.Masters > 1 {
		// Several masters: the host's API port is kiln's own endpoint,
		// which passes each connection to a master that answers.
		if c.endpoint, err = newEndpoint(o.APIPort, c.masterAPIs); err != nil {
			hub.Close()
			return nil, err
		}
		c.APIPort = c.endpoint.port
	}
	if o.Egress {
		c.say("egress on: every VM reaches the host's networks through QEMU's NAT (eth1, default route %s, DNS %s)", userNetGateway, userNetDNS)
	}
	for _, n := range nodes {
		if slices.Contains(o.Later, n.Name) {
			continue
		}
		if err := c.boot(n); err != nil {
			c.Close()
			return nil, err
		}
		if n.Role == node.RoleMaster && n.Name == MasterName {
			if c.endpoint == nil {
				c.APIPort = n.VM().HostPort(apiGuestPort)
			}
			if err := c.writeKubeconfig(cl); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	if o.VIP != "" {
		vctx, cancel := context.WithCancel(context.Background())
		c.stopVIP = cancel
		go c.watchVIP(vctx)
	}
	return c, nil
}

// Masters are the cluster's masters, the first first.
func (c *Cluster) Masters() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n.Role == node.RoleMaster {
			out = append(out, n)
		}
	}
	return out
}

// masterAPIs are the host addresses of the running masters' forwarded
// API ports, with a channel closed when that VM stops and whether the
// master holds the VIP: the endpoint's backends.
func (c *Cluster) masterAPIs() []backend {
	var out []backend
	for _, n := range c.Masters() {
		if vm := n.VM(); vm != nil {
			out = append(out, backend{name: n.Name, addr: fmt.Sprintf("127.0.0.1:%d", n.APIHostPort()), gone: vm.Done(), vip: n.HoldsVIP()})
		}
	}
	return out
}

// openImage opens an image directory that must hold a kernel-format image
// of role.
func openImage(dir string, role node.Role) (*builder.Dir, error) {
	d, err := builder.Open(dir)
	if err == nil && d.Role != role {
		err = fmt.Errorf("%s is a %s image, not a %s image", dir, d.Role, role)
	}
	if err == nil {
		_, err = d.Kernel()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: build it with \"make image ROLE=%s FORMAT=kernel\"", err, role)
	}
	return d, nil
}

// nodeConfig is a node's config drive content: a layer over the image's
// embedded config.
func (c *Cluster) nodeConfig(n *Node) []byte {
	l := node.NewLayer(n.Role, n.hostname())
	l.Network = &node.Network{Interface: "eth0", Address: n.Address + "/24"}
	l.NodeSecret = n.secret
	if c.opts.Masters > 1 {
		cp := &node.ControlPlane{}
		for _, m := range c.Masters() {
			cp.Masters = append(cp.Masters, m.Address)
		}
		cp.VIP = c.opts.VIP
		l.ControlPlane = cp
	}
	if c.stateDiskMiB(n) > 0 {
		// The second virtio disk: the config drive is the first.
		l.Storage = &node.Storage{StateDisk: "/dev/vdb", Format: node.FormatAuto}
	}
	if eth1 := c.eth1(n); eth1 != nil {
		l.Network.Additional = []node.Network{*eth1}
	}
	if n.Role == node.RoleMaster {
		// The API forward reaches the API server on eth1: it listens
		// there too.
		l.ExtraArgs = map[string]map[string]string{node.ComponentAPIServer: {"bind-address": "0.0.0.0"}}
	} else {
		l.APIEndpoint = fmt.Sprintf("https://%s%d:%d", subnetPrefix, masterHost, apiGuestPort)
		if c.opts.VIP != "" {
			l.APIEndpoint = fmt.Sprintf("https://%s:%d", c.opts.VIP, apiGuestPort)
		}
	}
	l.Registries = c.opts.Registries
	return l.YAML("Written by kiln cluster for the VM " + n.Name + ".")
}

// eth1 is a node's second NIC in its config, QEMU's user network: on a
// master for the API and node API forwards (and Options.GuestForwards);
// with Options.Egress, on every node, as its default route and with
// QEMU's DNS forwarder as its name server. The node's address stays
// eth0's (the kubelet, flannel, etcd and the API server are given it):
// only traffic for outside the cluster's L2 takes eth1. nil: no eth1.
func (c *Cluster) eth1(n *Node) *node.Network {
	if n.Role != node.RoleMaster && !c.opts.Egress && !c.workerForwards() {
		return nil
	}
	nw := &node.Network{Interface: "eth1", Address: userNetGuest}
	if c.opts.Egress {
		nw.Gateway = userNetGateway
		nw.DNS = []string{userNetDNS}
	}
	return nw
}

// prepare writes the node's config drive and its QEMU options.
func (c *Cluster) prepare(n *Node) error {
	dir := c.opts.StateDir
	if err := n.loadSecret(dir); err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, n.Name+".yaml")
	// The config holds the node's secret: 0600, as its config drive.
	if err := os.WriteFile(cfgPath, c.nodeConfig(n), 0o600); err != nil {
		return err
	}
	drive := filepath.Join(dir, n.Name+".config.iso")
	if err := configDrive(drive, cfgPath); err != nil {
		return err
	}
	img, mem := n.image, c.opts.WorkerMemory
	if n.Role == node.RoleMaster {
		mem = c.opts.MasterMemory
	}
	if mem < img.SuggestedMemoryMiB() {
		c.say("%s: warning: %d MiB may be too little to unpack its %d MiB initramfs (want %d MiB or more)",
			n.Name, mem, img.InitramfsRaw>>20, img.SuggestedMemoryMiB())
	}
	boot, err := c.bootOptions(n)
	if err != nil {
		return err
	}
	n.opts = append(boot,
		qemu.WithMemory(mem), qemu.WithCPUs(c.opts.CPUs),
		qemu.WithSocketNet(c.hub.Addr(), n.MAC), // eth0: the cluster's L2
		qemu.WithDrive(qemu.Disk{Path: drive, Format: "raw", ReadOnly: true}),
		qemu.WithSerialLog(n.ConsoleLog),
		// kiln reboot --node: the guest's reboot boots the same image
		// again instead of ending the VM.
		qemu.WithReboot(),
	)
	if c.stateDiskMiB(n) > 0 && !c.opts.Disks {
		disk := c.stateDisk(n)
		if _, err := os.Stat(disk); errors.Is(err, fs.ErrNotExist) {
			if err := blankDisk(disk, c.stateDiskMiB(n)); err != nil {
				return err
			}
		}
		// cache=unsafe: a test cluster's disk must survive its QEMU
		// being killed (it does: the host's page cache keeps it), not
		// the host crashing; with the host's flush per etcd write,
		// etcd under TCG missed its leases' renewals.
		n.opts = append(n.opts, qemu.WithDrive(qemu.Disk{Path: disk, Format: "raw", Cache: "unsafe"}))
	}
	if n.Role == node.RoleMaster {
		// One master: the host's API port is its forward. Several: each
		// forwards a free port, and the cluster's endpoint spreads over
		// them.
		apiPort := c.opts.APIPort
		if c.opts.Masters > 1 {
			apiPort = 0
		}
		if n.NodeAPIPort == 0 {
			// Chosen once, so it stays the node's across restarts.
			p, err := qemu.FreeTCPPort("127.0.0.1")
			if err != nil {
				return err
			}
			n.NodeAPIPort = p
		}
		n.opts = append(n.opts, qemu.WithUserNetConfig(c.userNet(n, apiPort))) // eth1
	} else if c.opts.Egress || c.workerForwards() {
		n.opts = append(n.opts, qemu.WithUserNetConfig(c.userNet(n, 0))) // eth1
	}
	return nil
}

// bootOptions are how a node boots: its role image's kernel format, or
// with Options.Disks its own disk, an overlay of the role's qcow2 made at
// its first boot (kept across restarts: it is the node's disk).
func (c *Cluster) bootOptions(n *Node) ([]qemu.Option, error) {
	if !c.opts.Disks {
		k, err := n.image.Kernel()
		if err != nil {
			return nil, err
		}
		return []qemu.Option{
			qemu.WithKernel(k.Vmlinuz),
			qemu.WithInitramfs(k.Initramfs),
			qemu.WithAppend(append(strings.Fields(k.Cmdline), c.opts.Append...)...),
		}, nil
	}
	base, err := n.image.Qcow2()
	if err != nil {
		return nil, err
	}
	base, err = filepath.Abs(base)
	if err != nil {
		return nil, err
	}
	disk := filepath.Join(c.opts.StateDir, n.Name+".qcow2")
	if !c.disksMade[n.Name] {
		os.Remove(disk)
		out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("%s's disk: qemu-img create: %v: %s", n.Name, err, strings.TrimSpace(string(out)))
		}
		if c.disksMade == nil {
			c.disksMade = map[string]bool{}
		}
		c.disksMade[n.Name] = true
	}
	return []qemu.Option{qemu.WithDisk(disk, "qcow2")}, nil
}

// userNet is a node's eth1, QEMU's user network, restrict=on unless
// Options.Egress. A master's has its API and node API forwarded from the
// host's loopback (apiPort 0: a free port), and Options.GuestForwards
// from the guest to the host; a worker's (Egress or WorkerGuestForwards)
// has no forward from the host, and the GuestForwards with
// WorkerGuestForwards.
func (c *Cluster) userNet(n *Node, apiPort int) qemu.UserNet {
	u := qemu.UserNet{
		MAC:    fmt.Sprintf("52:54:00:98:00:%s", n.MAC[len(n.MAC)-2:]),
		Egress: c.opts.Egress,
	}
	if n.Role == node.RoleMaster {
		u.Forwards = []qemu.Forward{
			{HostAddr: "127.0.0.1", HostPort: apiPort, GuestPort: apiGuestPort},
			{HostAddr: "127.0.0.1", HostPort: n.NodeAPIPort, GuestPort: nodeapi.Port},
		}
		u.GuestForwards = c.opts.GuestForwards
	} else if c.workerForwards() {
		u.GuestForwards = c.opts.GuestForwards
	}
	return u
}

// workerForwards reports whether the workers get the GuestForwards
// (Options.WorkerGuestForwards, with forwards to give).
func (c *Cluster) workerForwards() bool {
	return c.opts.WorkerGuestForwards && len(c.opts.GuestForwards) > 0
}

// Egress reports whether the VMs were given a way out (Options.Egress).
func (c *Cluster) Egress() bool { return c.opts.Egress }

// configDrive writes a small ISO 9660 image labelled image.ConfigDriveLabel
// holding the node config as image.ConfigDriveFile (PID 1 overlays it on the embedded
// config). ISO 9660 rather than FAT: it has no partition table for the
// kernel to misread, and xorriso is already a build dependency.
func configDrive(path, cfg string) error {
	os.Remove(path)
	out, err := exec.Command("xorriso", "-as", "mkisofs", "-quiet", "-V", image.ConfigDriveLabel, "-o", path,
		"-graft-points", image.ConfigDriveFile+"="+cfg).CombinedOutput()
	if err != nil {
		return fmt.Errorf("config drive %s: xorriso: %v: %s (xorriso is installed by make deps)", path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (c *Cluster) boot(n *Node) error {
	vm, err := qemu.Start(c.ctx, n.opts...)
	if err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	n.mu.Lock()
	n.vm = vm
	n.mu.Unlock()
	c.say("%s: booting (%s, pid %d, console %s)", n.Name, n.Address, vm.PID(), n.ConsoleLog)
	return nil
}

func (c *Cluster) say(format string, args ...any) {
	fmt.Fprintf(c.opts.Progress, "kiln cluster: [%6.1fs] %s\n", time.Since(c.started).Seconds(), fmt.Sprintf(format, args...))
}

// writeKubeconfig writes StateDir/admin.kubeconfig: the cluster's admin
// credentials with the forwarded API address.
func (c *Cluster) writeKubeconfig(cl *cluster.Cluster) error {
	data, err := os.ReadFile(cl.Paths().AdminKubeconfig)
	if err != nil {
		return err
	}
	out, err := pki.RewriteKubeconfigServer(data, fmt.Sprintf("https://127.0.0.1:%d", c.APIPort))
	if err != nil {
		return fmt.Errorf("%s: %w", cl.Paths().AdminKubeconfig, err)
	}
	c.Kubeconfig, _ = filepath.Abs(filepath.Join(c.opts.StateDir, cluster.AdminKubeconfigFile))
	if err := pki.WriteFile(c.Kubeconfig, out, true); err != nil {
		return err
	}
	c.api, err = NewClient(c.Kubeconfig)
	return err
}

// Client reads the cluster's nodes with a kubeconfig written by kiln (a
// client certificate), without client-go.
type Client struct {
	server string
	http   *http.Client
}

// NewClient reads a kiln kubeconfig.
func NewClient(kubeconfig string) (*Client, error) {
	server, cfg, err := pki.LoadKubeconfigTLS(kubeconfig)
	if err != nil {
		return nil, err
	}
	return &Client{server: server, http: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}}, nil
}

// NodeStatus is a node as the API reports it.
type NodeStatus struct {
	Name, Version string
	Ready         bool
	// InternalIP is the node's first InternalIP address ("" if none).
	InternalIP string
}

// APINodes lists the nodes the API server knows.
func (c *Cluster) APINodes(ctx context.Context) ([]NodeStatus, error) { return c.api.Nodes(ctx) }

// Nodes lists the nodes the API server knows.
func (c *Client) Nodes(ctx context.Context) ([]NodeStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+"/api/v1/nodes", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/v1/nodes: %s", resp.Status)
	}
	return ParseNodeList(resp.Body)
}

// ParseNodeList reads a v1 NodeList.
func ParseNodeList(r io.Reader) ([]NodeStatus, error) {
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status struct {
				Conditions []struct {
					Type, Status string
				} `json:"conditions"`
				NodeInfo struct {
					KubeletVersion string `json:"kubeletVersion"`
				} `json:"nodeInfo"`
				Addresses []struct {
					Type, Address string
				} `json:"addresses"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.NewDecoder(r).Decode(&list); err != nil {
		return nil, fmt.Errorf("node list: %w", err)
	}
	var out []NodeStatus
	for _, it := range list.Items {
		s := NodeStatus{Name: it.Metadata.Name, Version: it.Status.NodeInfo.KubeletVersion}
		for _, cond := range it.Status.Conditions {
			if cond.Type == "Ready" {
				s.Ready = cond.Status == "True"
			}
		}
		for _, a := range it.Status.Addresses {
			if a.Type == "InternalIP" && s.InternalIP == "" && net.ParseIP(a.Address) != nil {
				s.InternalIP = a.Address
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// WaitReady waits until the named nodes (all of the cluster's, if none is
// named) are Ready, printing progress, and fails early when a VM exits.
func (c *Cluster) WaitReady(ctx context.Context, names ...string) error {
	if len(names) == 0 {
		for _, n := range c.Nodes {
			names = append(names, n.Name)
		}
	}
	apiUp := false
	seen := map[string]string{}
	for {
		// Only the awaited nodes' VMs count: a node that was powered off
		// on purpose (a refused worker, say) does not fail the wait.
		for _, name := range names {
			n := c.Node(name)
			if n == nil || n.VM() == nil {
				continue
			}
			select {
			case <-n.VM().Done():
				return fmt.Errorf("%s: QEMU exited (%v); see %s", n.Name, n.VM().Wait(), n.ConsoleLog)
			default:
			}
			// A node can come up half-booted (a truncated initramfs
			// still registers a Ready node with programs missing):
			// its console says so first.
			if err := n.VM().Console().Failure(); err != nil {
				hint := ""
				if errors.Is(err, qemu.ErrInitramfsUnpack) {
					hint = fmt.Sprintf(" give %s VMs more memory (--%s-memory);", n.Role, n.Role)
				}
				return fmt.Errorf("%s: %w;%s see %s", n.Name, err, hint, n.ConsoleLog)
			}
		}
		nodes, err := c.APINodes(ctx)
		if err == nil {
			if !apiUp {
				apiUp = true
				c.say("API server answers on 127.0.0.1:%d", c.APIPort)
			}
			byName := map[string]NodeStatus{}
			for _, s := range nodes {
				byName[s.Name] = s
				state := "registered"
				if s.Ready {
					state = "Ready"
				}
				if seen[s.Name] != state {
					seen[s.Name] = state
					c.say("node %s %s (%s)", s.Name, state, s.Version)
				}
			}
			ready := true
			for _, n := range names {
				ready = ready && byName[n].Ready
			}
			if ready {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes not Ready (%v): see the consoles in %s", ctx.Err(), c.opts.StateDir)
		case <-time.After(3 * time.Second):
		}
	}
}

// Node returns a node by name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Restart powers a node off (ACPI, or a hard kill when hard) and boots it
// again with the same config: a diskless node starts afresh.
func (c *Cluster) Restart(ctx context.Context, name string, hard bool) error {
	n := c.Node(name)
	if n == nil {
		return fmt.Errorf("no node %s", name)
	}
	vm := n.VM()
	if hard {
		vm.Kill()
		<-vm.Done()
	} else {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := vm.Shutdown(sctx)
		cancel()
		if err != nil {
			return err
		}
	}
	return c.boot(n)
}

// Kill powers a node off hard (QEMU killed: no shutdown, as a power
// cut), and waits until its QEMU is gone. Boot starts it again.
func (c *Cluster) Kill(name string) error {
	n := c.Node(name)
	if n == nil {
		return fmt.Errorf("no node %s", name)
	}
	vm := n.VM()
	vm.Kill()
	<-vm.Done()
	c.say("%s: killed", n.Name)
	return nil
}

// WipeStateDisk replaces a stopped node's state disk by a blank one:
// the machine boots next as a node whose disk was changed, knowing
// nothing of its cluster but its config.
func (c *Cluster) WipeStateDisk(name string) error {
	n := c.Node(name)
	if n == nil || c.stateDiskMiB(n) == 0 {
		return fmt.Errorf("%s: no node with a state disk", name)
	}
	if vm := n.VM(); vm != nil {
		select {
		case <-vm.Done():
		default:
			return fmt.Errorf("%s is running", name)
		}
	}
	if err := blankDisk(c.stateDisk(n), c.stateDiskMiB(n)); err != nil {
		return err
	}
	c.say("%s: state disk wiped", n.Name)
	return nil
}

// stateDiskMiB is the size of n's state disk; 0: diskless.
func (c *Cluster) stateDiskMiB(n *Node) int {
	if n.Role == node.RoleMaster {
		return c.opts.MasterStateDisk
	}
	return c.opts.WorkerStateDisk
}

func (c *Cluster) stateDisk(n *Node) string {
	return filepath.Join(c.opts.StateDir, n.Name+".state.img")
}

// blankDisk (re)creates a sparse file of mib MiB: all zeros, which PID 1
// formats (storage.format: auto).
func blankDisk(path string, mib int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(mib) << 20); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Boot starts a node that was killed, or one Up left for later
// (Options.Later), with its config: a diskless node starts afresh.
func (c *Cluster) Boot(name string) error {
	n := c.Node(name)
	if n == nil {
		return fmt.Errorf("no node %s", name)
	}
	if vm := n.VM(); vm != nil {
		select {
		case <-vm.Done():
		default:
			return fmt.Errorf("%s is running", name)
		}
	}
	return c.boot(n)
}

// Close powers every VM off, workers first, then the master, and stops
// the hub.
func (c *Cluster) Close() error {
	var errs []error
	for i := len(c.Nodes) - 1; i >= 0; i-- {
		n := c.Nodes[i]
		vm := n.VM()
		if vm == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := vm.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
		}
		cancel()
		c.say("%s: powered off", n.Name)
	}
	c.hub.Close()
	if c.stopVIP != nil {
		c.stopVIP()
	}
	if c.endpoint != nil {
		c.endpoint.Close()
	}
	return errors.Join(errs...)
}

// AddWorker boots one more worker from another image (e.g. built with a
// different bootstrap token) on the cluster's L2. With a hostname, the
// machine asks to join under that name (e.g. another node's), with a
// secret of its own.
func (c *Cluster) AddWorker(image, hostname string) (*Node, error) {
	i := len(c.Nodes)
	n := &Node{Name: fmt.Sprintf(workerNameFmt, i+1-c.opts.Masters), Role: node.RoleWorker, Address: fmt.Sprintf("%s%d", subnetPrefix, masterHost+i),
		MAC: fmt.Sprintf("52:54:00:99:00:%02x", masterHost+i), Hostname: hostname}
	n.ConsoleLog = filepath.Join(c.opts.StateDir, n.Name+".console.log")
	var err error
	if n.image, err = openImage(image, node.RoleWorker); err != nil {
		return nil, err
	}
	if err := c.prepare(n); err != nil {
		return nil, err
	}
	if err := c.boot(n); err != nil {
		return nil, err
	}
	c.Nodes = append(c.Nodes, n)
	return n, nil
}

func (n *Node) hostname() string {
	if n.Hostname != "" {
		return n.Hostname
	}
	return n.Name
}

// loadSecret gives a worker its node secret (components/join): made once
// and kept in the state directory, so the VM rejoins under its name after
// every reboot and no other machine can take the name. A master's name
// is the control plane's and needs none.
func (n *Node) loadSecret(dir string) error {
	if n.Role != node.RoleWorker || n.secret != "" {
		return nil
	}
	path := filepath.Join(dir, n.Name+".secret")
	if b, err := os.ReadFile(path); err == nil && len(b) >= 16 {
		n.secret = string(b)
		return nil
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	n.secret = hex.EncodeToString(b)
	return os.WriteFile(path, []byte(n.secret), 0o600)
}
