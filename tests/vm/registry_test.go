//go:build vm

package vm

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"kiln/configs/node"
	"kiln/images/oci"
	"kiln/internal/testutil"
	"kiln/internal/testutil/e2e"
	"kiln/internal/testutil/registry"
	"kiln/qemu"
	"kiln/qemu/vmcluster"
)

// TestCluster runs this scenario on its booted cluster:
//
//	reg := startTestRegistries(t)  // before vmcluster.Up
//	c, err := vmcluster.Up(ctx, vmcluster.Options{…,
//		GuestForwards: reg.GuestForwards, // the masters' user network (eth1)
//		Registries:    &reg.Registries,   // every node's config layer
//	})
//	…
//	t.Run("registry pulls", func(t *testing.T) { checkRegistryPulls(t, k, c, filepath.Join(dir, "cluster"), reg) })
//
// GuestForwards go onto the masters' qemu.UserNet (eth1, 10.0.2.15/24,
// restrict=on kept), Registries into the node.Layer of every config
// drive. The pods run on the master: the workers' only NIC is the
// cluster's L2.

// The test binary is the guest forwards' relay: QEMU starts it once per
// connection a VM opens to a registry's guest address (qemu.ProxyCommand).
// init runs before the testing package reads its flags.
func init() { qemu.ServeProxy() }

// The registries' addresses as the VMs see them: addresses of QEMU's user
// network that no machine holds, forwarded to the host's loopback.
const (
	mirrorGuest       = "10.0.2.100" // a mirror of registry.kiln.test, HTTPS with its own CA
	privateGuest      = "10.0.2.101" // a private registry: HTTPS, basic auth, the right password
	wrongGuest        = "10.0.2.102" // the same registry, configured with a wrong password
	registryGuestPort = 5000
	mirroredRegistry  = "registry.kiln.test" // resolves nowhere: only its mirror serves it
)

// registrySetup is what the VMs need before they boot, and what the checks
// compare with.
type registrySetup struct {
	Mirror, Private *registry.Registry
	// GuestForwards relay the guest addresses to the registries.
	GuestForwards []qemu.GuestForward
	// Registries is the node config's section: where the guest
	// addresses are, their CAs and credentials.
	Registries node.Registries
	// Digest is the manifest digest of the image both registries hold.
	Digest   string
	password string
}

func guestHost(addr string) string { return addr + ":" + strconv.Itoa(registryGuestPort) }

// startTestRegistries runs a mirror and a private registry on the host's
// loopback, each with its own CA, pushes kiln-echo to both under a label
// no baked image has (its own digest), and says how the VMs reach them.
func startTestRegistries(t *testing.T) *registrySetup {
	t.Helper()
	s := &registrySetup{password: "pw-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	s.Mirror = registry.Start(t, registry.Options{TLS: true, Names: []string{mirrorGuest}})
	s.Private = registry.Start(t, registry.Options{TLS: true, Names: []string{privateGuest, wrongGuest}, Username: "kiln", Password: s.password})
	img, err := registry.Image(oci.Image{Ref: "kiln.test/echo:v1", Binary: "kiln-echo", Cmd: []string{"serve"}},
		e2e.Bin("oci/kiln-echo"), map[string]string{"kiln.test/from": "a registry"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*registry.Registry{s.Mirror, s.Private} {
		d, err := r.Push("kiln/echo:v1", img)
		if err != nil {
			t.Fatal(err)
		}
		s.Digest = d.String()
	}
	for guest, r := range map[string]*registry.Registry{mirrorGuest: s.Mirror, privateGuest: s.Private, wrongGuest: s.Private} {
		cmd, err := qemu.ProxyCommand(r.Addr)
		if err != nil {
			t.Fatal(err)
		}
		s.GuestForwards = append(s.GuestForwards, qemu.GuestForward{GuestAddr: guest, GuestPort: registryGuestPort, Command: cmd})
	}
	no := false
	s.Registries = node.Registries{
		Mirrors: map[string]node.Mirror{
			mirroredRegistry: {Endpoints: []string{"https://" + guestHost(mirrorGuest)}, Upstream: &no},
		},
		Configs: map[string]node.RegistryConfig{
			guestHost(mirrorGuest): {TLS: &node.RegistryTLS{CA: string(s.Mirror.CAPEM)}},
			guestHost(privateGuest): {
				Auth: &node.RegistryAuth{Username: "kiln", Password: node.Secret(s.password)},
				TLS:  &node.RegistryTLS{CA: string(s.Private.CAPEM)},
			},
			guestHost(wrongGuest): {
				Auth: &node.RegistryAuth{Username: "kiln", Password: "not-" + node.Secret(s.password)},
				TLS:  &node.RegistryTLS{CA: string(s.Private.CAPEM)},
			},
		},
	}
	if err := s.Registries.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

// pullPod is a pod on the master (the node with the forwards) that pulls
// its image every time.
func pullPod(name, image, policy string) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %s, labels: {app: registry-pull}}
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
  tolerations: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]
  containers:
  - name: echo
    image: %s
    imagePullPolicy: %s
    readinessProbe: {httpGet: {path: /, port: 8080}, timeoutSeconds: 10}
`, name, vmcluster.MasterName, image, policy)
}

// checkRegistryPulls: pods pull through a mirror (HTTPS, the mirror's own
// CA), from a private registry with the node's credentials (and its own
// CA); a wrong password gives the pod the registry's 401 in its events;
// a baked image is still used without a pull; the password is nowhere on
// the console or in containerd's log.
func checkRegistryPulls(t *testing.T, k func(...string) (string, error), c *vmcluster.Cluster, clusterDir string, s *registrySetup) {
	// must is kubectl that fails t: each subtest its own (FailNow only
	// from the test's own goroutine).
	must := func(t *testing.T) func(...string) string {
		return func(args ...string) string {
			t.Helper()
			out, err := k(args...)
			if err != nil {
				t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return out
		}
	}
	imageID := func(pod string) string {
		out, _ := k("get", "pod", pod, "-o", "jsonpath={.status.containerStatuses[0].imageID}")
		return out
	}
	running := func(pod string) func() error {
		return func() error {
			out, err := k("get", "pod", pod, "-o", "jsonpath={.status.phase} {.status.containerStatuses[0].ready} {.status.containerStatuses[0].state.waiting.message}")
			if err == nil && !strings.HasPrefix(out, "Running true") {
				err = fmt.Errorf("pod %s: %s", pod, out)
			}
			return err
		}
	}

	t.Run("through a mirror", func(t *testing.T) {
		apply(t, must(t), pullPod("pull-mirror", mirroredRegistry+"/kiln/echo:v1", "Always"))
		testutil.Eventually(t, 5*time.Minute, 3*time.Second, "pull-mirror Running", running("pull-mirror"))
		if id := imageID("pull-mirror"); !strings.HasSuffix(id, "@"+s.Digest) {
			t.Errorf("pull-mirror runs %q, want the pushed %s", id, s.Digest)
		}
		if s.Mirror.Served("/v2/kiln/echo/manifests/", " 200") == 0 {
			t.Errorf("the mirror served no manifest: %v", s.Mirror.Requests())
		}
	})

	t.Run("with credentials", func(t *testing.T) {
		apply(t, must(t), pullPod("pull-private", guestHost(privateGuest)+"/kiln/echo:v1", "Always"))
		testutil.Eventually(t, 5*time.Minute, 3*time.Second, "pull-private Running", running("pull-private"))
		if id := imageID("pull-private"); !strings.HasSuffix(id, "@"+s.Digest) {
			t.Errorf("pull-private runs %q, want the pushed %s", id, s.Digest)
		}
		// The registry asked (401), then served the node's credentials.
		if s.Private.Served("/v2/kiln/echo/manifests/", " 200") == 0 {
			t.Errorf("the private registry served no manifest: %v", s.Private.Requests())
		}
	})

	t.Run("a wrong password", func(t *testing.T) {
		apply(t, must(t), pullPod("pull-wrong", guestHost(wrongGuest)+"/kiln/echo:v1", "Always"))
		testutil.Eventually(t, 5*time.Minute, 3*time.Second, "the registry's 401 in pull-wrong's events", func() error {
			out, err := k("get", "events", "--field-selector", "involvedObject.name=pull-wrong", "-o", `jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}`)
			if err == nil && !strings.Contains(out, "401 Unauthorized") {
				err = fmt.Errorf("events:\n%s", out)
			}
			return err
		})
		// The event comes first; the kubelet's status update follows it
		// (ContainerCreating until then).
		testutil.Eventually(t, time.Minute, 2*time.Second, "pull-wrong waiting in ErrImagePull or ImagePullBackOff", func() error {
			out, err := k("get", "pod", "pull-wrong", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}")
			if err == nil && out != "ErrImagePull" && out != "ImagePullBackOff" {
				err = fmt.Errorf("pull-wrong waits for %q", out)
			}
			return err
		})
	})

	t.Run("baked images stay preferred", func(t *testing.T) {
		// kiln.local resolves nowhere and has no mirror: the pod runs
		// only because its image is the one imported at boot.
		apply(t, must(t), pullPod("baked", oci.EchoRef, "IfNotPresent"))
		testutil.Eventually(t, 3*time.Minute, 3*time.Second, "baked Running", running("baked"))
		out, _ := k("get", "events", "--field-selector", "involvedObject.name=baked", "-o", "jsonpath={range .items[*]}{.reason} {end}")
		if strings.Contains(out, "Pulling") {
			t.Errorf("the baked image was pulled: events %s", out)
		}
	})

	t.Run("the password is never shown", func(t *testing.T) {
		master := c.Node(vmcluster.MasterName)
		console, err := os.ReadFile(master.ConsoleLog)
		if err != nil {
			t.Fatal(err)
		}
		logs, err := nodeLog(clusterDir, master, node.ComponentContainerd)
		if err != nil {
			t.Fatal(err)
		}
		for what, text := range map[string]string{"the console": string(console), "containerd's log": logs} {
			if strings.Contains(text, s.password) {
				t.Errorf("%s shows the registry password", what)
			}
		}
	})

	// Not waited for: the pods are on the master, which the next steps
	// of TestCluster leave alone, and a deleted pull-wrong stops asking.
	must(t)("delete", "pod", "-l", "app=registry-pull", "--wait=false")
}
