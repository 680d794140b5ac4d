package addons

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"kiln/configs/cluster"
)

func TestRender(t *testing.T) {
	objs, err := Render(Values{TokenID: "abcdef", TokenSecret: "0123456789abcdef", ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local", CoreDNSImage: "kiln.local/coredns:v1", MasterName: "m0", CABundle: "-----BEGIN CERTIFICATE-----\n", MetricsServerPort: 10262})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]map[string]any{}
	for _, o := range objs {
		if _, ok := resources[o.GetAPIVersion()+"/"+o.GetKind()]; !ok {
			t.Errorf("%s %s: kind not in the resource table", o.GetKind(), o.GetName())
		}
		byName[o.GetKind()+"/"+o.GetName()] = o.Object
	}
	sec, ok := byName["Secret/bootstrap-token-abcdef"]
	if !ok {
		t.Fatalf("no bootstrap token Secret among %v", keys(byName))
	}
	data := sec["data"].(map[string]any)
	if got, _ := base64.StdEncoding.DecodeString(data["token-secret"].(string)); string(got) != "0123456789abcdef" {
		t.Errorf("token-secret %q", got)
	}
	if got, _ := base64.StdEncoding.DecodeString(data["auth-extra-groups"].(string)); string(got) != cluster.WorkerTokenGroup {
		t.Errorf("auth-extra-groups %q (kiln gen token's tokens have %q)", got, cluster.WorkerTokenGroup)
	}
	if sec["type"] != "bootstrap.kubernetes.io/token" {
		t.Errorf("secret type %v", sec["type"])
	}
	svc := byName["Service/kube-dns"]
	if ip := svc["spec"].(map[string]any)["clusterIP"]; ip != "10.96.0.10" {
		t.Errorf("kube-dns clusterIP %v", ip)
	}
	dep := byName["Deployment/coredns"]
	c := dep["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
	if c["image"] != "kiln.local/coredns:v1" || c["imagePullPolicy"] != "Never" {
		t.Errorf("coredns container image %v pull %v: the image must be the preloaded one, never pulled", c["image"], c["imagePullPolicy"])
	}
	if _, ok := byName["ClusterRoleBinding/kiln:node-autoapprove-bootstrap"]; ok {
		t.Error("bootstrappers' CSRs must not be auto-approved for any name: kiln's csr-approver decides them")
	}
	ids := byName["ConfigMap/kiln-node-identities"]
	if d, _ := ids["data"].(map[string]any); d["m0"] != "control-plane" {
		t.Errorf("the master's name is not reserved: %v", ids)
	}
	for _, want := range []string{"ClusterRoleBinding/kiln:kubelet-bootstrap", "ClusterRoleBinding/kiln:csr-approver", "RoleBinding/kiln:csr-approver",
		"ClusterRoleBinding/kiln:node-autoapprove-certificate-rotation", "ClusterRoleBinding/kiln:node-proxier", "ClusterRoleBinding/kiln:pod-network", "Role/kiln:vip", "RoleBinding/kiln:vip"} {
		if _, ok := byName[want]; !ok {
			t.Errorf("missing %s", want)
		}
	}
}

func keys(m map[string]map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// The bootstrap token's Secret is created once: deleted, it stays deleted
// at the next boot's apply (the token is revoked); a new token (another
// Secret) is created.
func TestTokenSecretCreatedOnce(t *testing.T) {
	ctx := context.Background()
	client := fake.NewSimpleDynamicClient(runtime.NewScheme())
	secrets := client.Resource(resources["v1/Secret"]).Namespace("kube-system")
	token := func(id string) []*unstructured.Unstructured {
		objs, err := Render(Values{TokenID: id, TokenSecret: "0123456789abcdef", ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local", CoreDNSImage: "c:v1", MasterName: "m0", CABundle: "-----BEGIN CERTIFICATE-----\n", MetricsServerPort: 10262})
		if err != nil {
			t.Fatal(err)
		}
		var out []*unstructured.Unstructured
		for _, o := range objs {
			if o.GetKind() == "Secret" {
				out = append(out, o)
			}
		}
		return out
	}
	if err := Apply(ctx, client, "kiln/m0", token("abcdef")); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Get(ctx, "bootstrap-token-abcdef", metav1.GetOptions{}); err != nil {
		t.Fatalf("first boot: %v", err)
	}
	// Applied again (a reboot): still there, untouched.
	if err := Apply(ctx, client, "kiln/m0", token("abcdef")); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Delete(ctx, "bootstrap-token-abcdef", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, client, "kiln/m0", token("abcdef")); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Get(ctx, "bootstrap-token-abcdef", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a deleted token came back at the next apply: %v", err)
	}
	if err := Apply(ctx, client, "kiln/m0", token("ghijkl")); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Get(ctx, "bootstrap-token-ghijkl", metav1.GetOptions{}); err != nil {
		t.Fatalf("a new token: %v", err)
	}
	rec, err := client.Resource(resources["v1/ConfigMap"]).Namespace("kube-system").Get(ctx, OnceRecord, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data, _, _ := unstructured.NestedStringMap(rec.Object, "data")
	if len(data) != 2 {
		t.Errorf("record %v, want both tokens", data)
	}
}

// The objects a worker's join needs lead the manifests and are the first
// group the addons task applies: the token's Secret, the bootstrappers'
// binding, the bound names and the csr-approver's rights. Nothing else is
// in the group.
func TestJoinFirst(t *testing.T) {
	objs, err := Render(Values{TokenID: "abcdef", TokenSecret: "0123456789abcdef", ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local", CoreDNSImage: "c:v1", MasterName: "m0", CABundle: "-----BEGIN CERTIFICATE-----\n", MetricsServerPort: 10262})
	if err != nil {
		t.Fatal(err)
	}
	join, rest := JoinFirst(objs)
	var got []string
	for _, o := range join {
		got = append(got, o.GetKind()+"/"+o.GetName())
	}
	want := []string{"Secret/bootstrap-token-abcdef", "ClusterRoleBinding/kiln:kubelet-bootstrap", "ConfigMap/kiln-node-identities",
		"ClusterRole/kiln:csr-approver", "ClusterRoleBinding/kiln:csr-approver", "Role/kiln:csr-approver", "RoleBinding/kiln:csr-approver"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("join group %v, want %v", got, want)
	}
	if len(join)+len(rest) != len(objs) {
		t.Fatalf("%d + %d objects, rendered %d", len(join), len(rest), len(objs))
	}
	for i, o := range join {
		if objs[i] != o {
			t.Errorf("manifests.yaml: %s is not among the first objects (the join's objects lead the file)", got[i])
		}
	}
	for _, o := range rest {
		if o.GetKind() == "Secret" {
			t.Errorf("Secret %s not in the join group", o.GetName())
		}
	}
}

func TestTransient(t *testing.T) {
	gr := schema.GroupResource{Resource: "secrets"}
	for err, want := range map[error]bool{
		errors.New("dial tcp 10.0.2.15:6443: connect: connection refused"):                 true,
		apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "kube-system"): true,
		apierrors.NewServiceUnavailable("starting"):                                        true,
		apierrors.NewTooManyRequests("slow down", 1):                                       true,
		apierrors.NewInternalError(errors.New("etcd")):                                     true,
		apierrors.NewInvalid(schema.GroupKind{Kind: "Secret"}, "x", nil):                   false,
		apierrors.NewForbidden(gr, "x", errors.New("no")):                                  false,
		apierrors.NewBadRequest("bad"):                                                     false,
	} {
		if got := Transient(fmt.Errorf("applying: %w", err)); got != want {
			t.Errorf("Transient(%v) = %v, want %v", err, got, want)
		}
	}
}

// The first apply after the API server starts may find kube-system not
// created yet: ApplyRetrying tries again (one line, not one per try); a
// refusal that will not pass is returned at once.
func TestApplyRetrying(t *testing.T) {
	ctx := context.Background()
	objs, err := Render(Values{TokenID: "abcdef", TokenSecret: "0123456789abcdef", ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local", CoreDNSImage: "c:v1", MasterName: "m0", CABundle: "-----BEGIN CERTIFICATE-----\n", MetricsServerPort: 10262})
	if err != nil {
		t.Fatal(err)
	}
	// The token's Secret: the fake client does not apply (patch) what
	// does not exist, but creates.
	join, _ := JoinFirst(objs)
	join = join[:1]
	client := fake.NewSimpleDynamicClient(runtime.NewScheme())
	fails := 3
	client.PrependReactor("*", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if fails > 0 {
			fails--
			return true, nil, apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "kube-system")
		}
		return false, nil, nil
	})
	var out strings.Builder
	if err := ApplyRetrying(ctx, client, "kiln/m0", join, Retry{For: 10 * time.Second, Every: time.Millisecond, Out: &out}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n != 1 || !strings.Contains(out.String(), "addons: retrying") {
		t.Errorf("lines: %q", out.String())
	}
	if _, err := client.Resource(resources["v1/Secret"]).Namespace("kube-system").Get(ctx, "bootstrap-token-abcdef", metav1.GetOptions{}); err != nil {
		t.Errorf("the token's Secret after the retries: %v", err)
	}

	forbidden := fake.NewSimpleDynamicClient(runtime.NewScheme())
	tries := 0
	forbidden.PrependReactor("*", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tries++
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "x", errors.New("no"))
	})
	if err := ApplyRetrying(ctx, forbidden, "kiln/m0", join, Retry{For: 10 * time.Second, Every: time.Millisecond}); !apierrors.IsForbidden(err) || tries != 1 {
		t.Errorf("forbidden: %v after %d tries, want it at once", err, tries)
	}
}
