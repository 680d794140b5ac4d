//go:build vm

package vm

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"kiln/internal/testutil"
	"kiln/pki"
)

// checkMetrics: kubectl top answers (metrics-server on the master, behind
// the aggregated API), for every node and for the pods of every
// namespace. readyAt is when the nodes were Ready, for the figure.
func checkMetrics(t *testing.T, k func(...string) (string, error), nodes []string, readyAt time.Time) {
	testutil.Eventually(t, 5*time.Minute, 5*time.Second, "kubectl top nodes: every node with CPU and memory", func() error {
		out, err := k("top", "nodes", "--no-headers")
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(n) + `\s+\d+m\s+\d+%\s+\d+Mi\s+\d+%`).MatchString(out) {
				return fmt.Errorf("no figures for %s in:\n%s", n, out)
			}
		}
		return nil
	})
	t.Logf("FIGURE cluster: nodes Ready to kubectl top nodes answering: %s", time.Since(readyAt).Round(time.Second))
	testutil.Eventually(t, 3*time.Minute, 5*time.Second, "kubectl top pods -A: CoreDNS among them", func() error {
		out, err := k("top", "pods", "-A", "--no-headers")
		if err != nil {
			return err
		}
		if !regexp.MustCompile(`(?m)^kube-system\s+coredns-\S+\s+\d+m\s+\d+Mi`).MatchString(out) {
			return fmt.Errorf("no CoreDNS pod in:\n%s", out)
		}
		return nil
	})
	if out, err := k("get", "apiservice", "v1beta1.metrics.k8s.io", "-o", `jsonpath={.status.conditions[?(@.type=="Available")].status}`); err != nil || out != "True" {
		t.Errorf("APIService v1beta1.metrics.k8s.io Available: %q %v", out, err)
	}
}

// checkWebhook: a validating admission webhook served by a pod, behind a
// ClusterIP Service, is called by the API server (issue 13: the master's
// own network namespace reaches a ClusterIP). With failurePolicy Fail,
// an allowed create proves the call went through as much as the denied
// one does.
func checkWebhook(t *testing.T, mustK func(...string) string, k func(...string) (string, error)) {
	dir := t.TempDir()
	ca, err := pki.NewCA("kiln-test-webhook-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.CertRequest{
		CommonName: "kiln-webhook.default.svc", DNSNames: []string{"kiln-webhook.default.svc"},
		Server: true, Validity: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(crt, certPEM, 0o600)
	os.WriteFile(key, keyPEM, 0o600)
	mustK("create", "secret", "tls", "kiln-webhook", "--cert", crt, "--key", key)
	apply(t, mustK, webhookServer)
	defer func() {
		k("delete", "validatingwebhookconfiguration", "kiln-test-webhook", "--ignore-not-found")
		k("delete", "deployment,service,secret", "kiln-webhook", "--ignore-not-found")
		k("delete", "configmap", "-l", "kiln.dev/webhook-test", "--ignore-not-found")
	}()
	waitPods(t, k, "app=kiln-webhook", 1, 5*time.Minute)
	apply(t, mustK, strings.ReplaceAll(webhookConfig, "CABUNDLE", base64.StdEncoding.EncodeToString(ca.CertPEM)))

	// The API server may take a moment to see the new configuration:
	// until the denial shows, the webhook was not called.
	testutil.Eventually(t, 2*time.Minute, 3*time.Second, "the API server calls the webhook and denies the labelled ConfigMap", func() error {
		out, err := k("apply", "--dry-run=server", "-f", writeTemp(t, labelledConfigMap("denied", "true")))
		if err == nil {
			return fmt.Errorf("allowed: %s", out)
		}
		if !strings.Contains(err.Error(), "kiln-echo webhook denies denied") {
			return fmt.Errorf("refused, not by the webhook: %v", err)
		}
		return nil
	})
	if out, err := k("apply", "-f", writeTemp(t, labelledConfigMap("allowed", "false"))); err != nil {
		t.Errorf("a ConfigMap the webhook allows: %v %s", err, out)
	}
}

func labelledConfigMap(name, deny string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata:
  name: %s
  labels: {kiln.dev/webhook-test: "yes", kiln.dev/deny: %q}
data: {a: b}
`, name, deny)
}

// webhookServer: kiln-echo's webhook behind a ClusterIP Service.
const webhookServer = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: kiln-webhook}
spec:
  replicas: 1
  selector: {matchLabels: {app: kiln-webhook}}
  template:
    metadata: {labels: {app: kiln-webhook}}
    spec:
      tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
      containers:
      - name: webhook
        image: kiln.local/kiln-echo:v1
        args: [webhook, -cert, /tls/tls.crt, -key, /tls/tls.key]
        ports: [{containerPort: 8443}]
        readinessProbe: {tcpSocket: {port: 8443}, periodSeconds: 2}
        volumeMounts: [{name: tls, mountPath: /tls, readOnly: true}]
      volumes: [{name: tls, secret: {secretName: kiln-webhook}}]
---
apiVersion: v1
kind: Service
metadata: {name: kiln-webhook}
spec:
  selector: {app: kiln-webhook}
  ports: [{port: 443, targetPort: 8443}]
`

// webhookConfig: ConfigMaps labelled kiln.dev/webhook-test go to the
// webhook; failurePolicy Fail, so an unreachable webhook refuses them all.
const webhookConfig = `
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: kiln-test-webhook}
webhooks:
- name: deny.kiln.dev
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 10
  objectSelector: {matchExpressions: [{key: kiln.dev/webhook-test, operator: Exists}]}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [configmaps]}]
  clientConfig:
    caBundle: CABUNDLE
    service: {namespace: default, name: kiln-webhook, path: /validate, port: 443}
`

// checkVolumeWrite: a claim of the default class is bound to a volume on
// the worker's state disk, and a pod running as a non-root user writes
// to it. It returns what it wrote, for checkVolumeAfterReboot.
func checkVolumeWrite(t *testing.T, mustK func(...string) string, k func(...string) (string, error)) string {
	apply(t, mustK, volumeManifest)
	pods := waitPods(t, k, "app=volume", 1, 10*time.Minute)
	if pods[0].node != "kiln-worker-1" {
		t.Fatalf("the volume's pod runs on %s, want kiln-worker-1", pods[0].node)
	}
	out := mustK("get", "pvc", "data", "-o", `jsonpath={.status.phase} {.spec.storageClassName} {.spec.volumeName}`)
	f := strings.Fields(out)
	if len(f) != 3 || f[0] != "Bound" || f[1] != "local" {
		t.Fatalf("claim data: want Bound, class local (the default), got %q", out)
	}
	pv := mustK("get", "pv", f[2], "-o", `jsonpath={.spec.hostPath.path} {.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}`)
	if want := "/var/lib/kiln/volumes/" + f[2] + " kiln-worker-1"; pv != want {
		t.Errorf("volume %s: path and node %q, want %q", f[2], pv, want)
	}
	text := fmt.Sprintf("kiln-%d", time.Now().UnixNano())
	mustK("exec", pods[0].name, "--", "kiln-echo", "write", "/data/hello", text)
	return text
}

// checkVolumeAfterReboot: after the worker's reboot its pod runs again
// with the same data; deleting the claim deletes the volume.
func checkVolumeAfterReboot(t *testing.T, mustK func(...string) string, k func(...string) (string, error), text string) {
	pods := waitPods(t, k, "app=volume", 1, 10*time.Minute)
	if out, err := k("exec", pods[0].name, "--", "kiln-echo", "cat", "/data/hello"); err != nil || out != text {
		t.Errorf("the volume's data after the worker's reboot: %q %v, want %q", out, err, text)
	}
	pv := mustK("get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}")
	mustK("delete", "deployment", "volume", "--cascade=foreground")
	mustK("delete", "pvc", "data")
	testutil.Eventually(t, 3*time.Minute, 3*time.Second, "volume "+pv+" deleted with its claim", func() error {
		out, err := k("get", "pv", pv, "--ignore-not-found", "-o", "name")
		if err != nil || out != "" {
			return fmt.Errorf("still there: %q %v", out, err)
		}
		return nil
	})
}

// checkDisklessClaim: a claim whose pod can only run on a diskless node
// (the master) stays unbound, and says why in its events.
func checkDisklessClaim(t *testing.T, mustK func(...string) string, k func(...string) (string, error)) {
	apply(t, mustK, disklessManifest)
	defer k("delete", "pod,pvc", "nodisk", "--ignore-not-found", "--wait=false")
	testutil.Eventually(t, 3*time.Minute, 3*time.Second, "an event on claim nodisk saying the master has no state disk", func() error {
		out, err := k("get", "events", "--field-selector", "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=nodisk", "-o", "jsonpath={.items[*].message}")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "kiln-master has no state disk") {
			return fmt.Errorf("events: %q", out)
		}
		return nil
	})
	if out := mustK("get", "pvc", "nodisk", "-o", "jsonpath={.status.phase}"); out != "Pending" {
		t.Errorf("claim nodisk on a diskless node: %s, want Pending", out)
	}
}

// volumeManifest: a claim of the default class (none named) and a pod on
// the worker, as a non-root user, that mounts it.
const volumeManifest = `
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: volume}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector: {matchLabels: {app: volume}}
  template:
    metadata: {labels: {app: volume}}
    spec:
      nodeSelector: {kubernetes.io/hostname: kiln-worker-1}
      securityContext: {runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true}
      containers:
      - name: echo
        image: kiln.local/kiln-echo:v1
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
`

const disklessManifest = `
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: nodisk}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: nodisk}
spec:
  nodeSelector: {kubernetes.io/hostname: kiln-master}
  tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
  containers:
  - name: echo
    image: kiln.local/kiln-echo:v1
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: nodisk}}]
`
