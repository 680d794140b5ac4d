//go:build conformance

// Package conformance runs upstream's Kubernetes conformance suite
// (e2e.test built from k8s.io/kubernetes/test/e2e at kiln's version)
// against a kiln cluster in QEMU, as `make cluster` boots one: a master
// and workers built by `kiln build`, booted by qemu/vmcluster. The images
// the specs run are built here and served under their upstream names by
// a registry on the host's loopback, which every node's config mirrors
// registry.k8s.io to: nothing is pulled from the internet. make
// conformance runs it (build tag conformance).
package conformance

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"kiln/configs/node"
	"kiln/internal/testutil/e2e"
	"kiln/internal/testutil/registry"
	"kiln/qemu"
	"kiln/qemu/vmcluster"
)

var (
	outDir  = flag.String("out", "../../out/conformance", "holds e2e.test and agnhost (make conformance builds them); the run's cluster, VMs, logs and reports go there too")
	focus   = flag.String("focus", "", "only the conformance specs whose text matches this regular expression (ginkgo's --focus)")
	skip    = flag.String("skip", "", "not the specs whose text matches this regular expression (ginkgo's --skip)")
	workers = flag.Int("workers", 2, "workers beside the master")
	suiteTO = flag.Duration("suite-timeout", 48*time.Hour, "how long e2e.test may run (ginkgo's --timeout)")
)

// The test binary is the guest forwards' relay (qemu.ProxyCommand): QEMU
// starts it once per connection a VM opens to the registry's guest
// address. init runs before the testing package reads its flags.
func init() { qemu.ServeProxy() }

// The registry as every VM sees it: an address of its QEMU user network
// (eth1) that no machine holds, forwarded to the host's loopback.
const (
	registryGuest = "10.0.2.100:5000"
	// upstreamRegistry is the registry the specs' images name.
	upstreamRegistry = "registry.k8s.io"
)

// Guest memory in MiB: the master runs the control plane (its taint
// keeps the specs' pods off it), the workers the specs' pods.
const (
	masterMemory = 1536
	workerMemory = 1024
)

func TestConformance(t *testing.T) {
	out, err := filepath.Abs(*outDir)
	if err != nil {
		t.Fatal(err)
	}
	e2eTest, agnhost := filepath.Join(out, "e2e.test"), filepath.Join(out, "agnhost")
	for _, f := range []string{e2eTest, agnhost} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v: make conformance builds it", err)
		}
	}
	// The previous run's cluster, images and VMs go; its reports are
	// overwritten.
	for _, d := range []string{"cluster", "master", "worker", "vms", "e2e"} {
		if err := os.RemoveAll(filepath.Join(out, d)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"junit.xml", "summary.txt", "e2e.log"} {
		os.Remove(filepath.Join(out, f))
	}

	reg := startRegistry(t, agnhost)

	// A cluster of its own, as make cluster makes one: a fresh cluster
	// directory, a master and a worker image.
	clusterDir := filepath.Join(out, "cluster")
	e2e.MustKiln(t, "gen", "cluster", "--name", "conformance", "--out", clusterDir)
	images := map[string]string{}
	for _, role := range []string{"master", "worker"} {
		images[role] = filepath.Join(out, role)
		e2e.MustKiln(t, "build", "--role", role, "--node-binary", e2e.Bin(e2e.KilnNodeBin),
			"--cluster", clusterDir, "--format", "kernel", "--out", images[role])
	}

	ctx, cancel := context.WithTimeout(context.Background(), *suiteTO+time.Hour)
	// A cleanup, not a defer: it must run after the cluster's Close (the
	// cleanups run last first), or cancelling kills the VMs Close was to
	// power off.
	t.Cleanup(cancel)
	start := time.Now()
	c, err := vmcluster.Up(ctx, vmcluster.Options{
		MasterImage: images["master"], WorkerImage: images["worker"], ClusterDir: clusterDir,
		StateDir: filepath.Join(out, "vms"), Workers: *workers,
		MasterMemory: masterMemory, WorkerMemory: workerMemory,
		Progress: testLog{t},
		// Every node reaches the registry: the specs' pods run on the
		// workers.
		GuestForwards: reg.forwards, WorkerGuestForwards: true, Registries: &reg.config,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("%s console (tail):\n%s", n.Name, n.VM().Console().Tail(20))
			}
		}
		if err := c.Close(); err != nil {
			t.Log(err)
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Minute)
	err = c.WaitReady(wctx)
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster: QEMU start to %d nodes Ready: %s", len(c.Nodes), time.Since(start).Round(time.Second))

	res, err := runSuite(ctx, t, e2eTest, c.Kubeconfig, out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("images pulled through the mirror: %d manifests (%s)", reg.r.Served("/manifests/", " 200"), strings.Join(reg.pulled(), ", "))
	for _, tc := range res.Failed {
		t.Errorf("FAILED %s", failureLine(tc))
	}
	line := res.Summary()
	os.WriteFile(filepath.Join(out, "summary.txt"), []byte(line+"\n"), 0o644)
	fmt.Println(line)
	if res.Run() == 0 {
		t.Errorf("no spec ran: focus %q, skip %q match no conformance spec", *focus, *skip)
	}
}

// runSuite runs e2e.test against the cluster from the host, its output
// to the terminal and out/e2e.log, and reads the report it writes.
func runSuite(ctx context.Context, t *testing.T, e2eTest, kubeconfig, out string) (result, error) {
	rawJUnit := filepath.Join(out, "e2e", "junit_e2e.xml")
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--provider=skeleton",
		"--kubectl-path=" + e2e.Bin(e2e.KubectlBin),
		"--e2e-output-dir=" + filepath.Join(out, "e2e"),
		"--ginkgo.label-filter=Conformance",
		"--ginkgo.junit-report=" + rawJUnit,
		"--ginkgo.timeout=" + suiteTO.String(),
		"--ginkgo.no-color",
	}
	if *focus != "" {
		args = append(args, "--ginkgo.focus="+*focus)
	}
	if *skip != "" {
		args = append(args, "--ginkgo.skip="+*skip)
	}
	if err := os.MkdirAll(filepath.Join(out, "e2e"), 0o755); err != nil {
		return result{}, err
	}
	logFile, err := os.Create(filepath.Join(out, "e2e.log"))
	if err != nil {
		return result{}, err
	}
	defer logFile.Close()
	t.Logf("e2e.test %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, e2eTest, args...)
	cmd.Dir = filepath.Join(out, "e2e")
	cmd.Stdout = io.MultiWriter(os.Stdout, logFile)
	cmd.Stderr = cmd.Stdout
	// The upstream names, not a KUBE_TEST_REPO_LIST of the caller's.
	cmd.Env = append(os.Environ(), "KUBE_TEST_REPO_LIST=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	runErr := cmd.Run()
	res, err := readJUnit(rawJUnit, filepath.Join(out, "junit.xml"), time.Since(start))
	if err != nil {
		return res, fmt.Errorf("e2e.test: %v; its report: %w", runErr, err)
	}
	if runErr != nil && len(res.Failed) == 0 {
		// A failure outside any spec: the suite's setup (nodes, system
		// pods), a timeout.
		return res, fmt.Errorf("e2e.test: %v with no spec failed: see %s", runErr, logFile.Name())
	}
	return res, nil
}

// testRegistry is the registry on the host's loopback that every node
// mirrors registry.k8s.io to.
type testRegistry struct {
	r        *registry.Registry
	forwards []qemu.GuestForward
	config   node.Registries
	refs     []string
}

// startRegistry builds the images, pushes them under their upstream
// names, and says how the nodes reach the registry: a guest forward to
// it, and a mirror of registry.k8s.io that is the only place pulled from
// (upstream: false), HTTPS with the registry's own CA.
func startRegistry(t *testing.T, agnhostBin string) *testRegistry {
	t.Helper()
	host, _, _ := strings.Cut(registryGuest, ":")
	s := &testRegistry{r: registry.Start(t, registry.Options{TLS: true, Names: []string{host}})}
	kubeSrc, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes").Output()
	if err != nil {
		t.Fatalf("go list -m k8s.io/kubernetes: %v", err)
	}
	agnhost, err := agnhostImage(agnhostBin, strings.TrimSpace(string(kubeSrc)))
	if err != nil {
		t.Fatalf("agnhost image: %v", err)
	}
	// The previous agnhost some specs roll to and back (a Deployment's
	// update, kubectl's image set): the same program, a label of its own
	// for a digest of its own.
	agnhostPrev, err := withLabel(agnhost, "kiln.dev/conformance", "agnhost "+agnhostRef+" as "+agnhostPrevRef)
	if err != nil {
		t.Fatal(err)
	}
	busybox, err := busyboxImage()
	if err != nil {
		t.Fatalf("busybox image: %v", err)
	}
	pause, err := pauseImage(e2e.Bin("oci/pause"))
	if err != nil {
		t.Fatalf("pause image: %v", err)
	}
	for ref, img := range map[string]v1.Image{agnhostRef: agnhost, agnhostPrevRef: agnhostPrev, busyboxRef: busybox, pauseRef: pause} {
		repoTag, ok := strings.CutPrefix(ref, upstreamRegistry+"/")
		if !ok {
			t.Fatalf("%s is not an image of %s", ref, upstreamRegistry)
		}
		d, err := s.r.Push(repoTag, img)
		if err != nil {
			t.Fatal(err)
		}
		s.refs = append(s.refs, ref)
		t.Logf("image %s (%s) in the registry on %s", ref, d, s.r.Addr)
	}
	cmd, err := qemu.ProxyCommand(s.r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(registryGuest[len(host)+1:])
	s.forwards = []qemu.GuestForward{{GuestAddr: host, GuestPort: port, Command: cmd}}
	no := false
	s.config = node.Registries{
		Mirrors: map[string]node.Mirror{upstreamRegistry: {Endpoints: []string{"https://" + registryGuest}, Upstream: &no}},
		Configs: map[string]node.RegistryConfig{registryGuest: {TLS: &node.RegistryTLS{CA: string(s.r.CAPEM)}}},
	}
	if err := s.config.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

// pulled are the images whose manifests the registry served.
func (s *testRegistry) pulled() []string {
	var out []string
	for _, ref := range s.refs {
		repo, tag, _ := strings.Cut(strings.TrimPrefix(ref, upstreamRegistry+"/"), ":")
		if n := s.r.Served("/v2/"+repo+"/manifests/"+tag, " 200"); n > 0 {
			out = append(out, fmt.Sprintf("%s ×%d", ref, n))
		}
	}
	return out
}

// testLog sends progress lines to t.Log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
