package addons

import (
	"context"
	"encoding/base64"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic/fake"

	"kiln/configs/cluster"
)

func TestRender(t *testing.T) {
	objs, err := Render(Values{TokenID: "abcdef", TokenSecret: "0123456789abcdef", ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local", CoreDNSImage: "kiln.local/coredns:v1", MasterName: "m0"})
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
		"ClusterRoleBinding/kiln:node-autoapprove-certificate-rotation", "ClusterRoleBinding/kiln:node-proxier", "ClusterRoleBinding/kiln:pod-network"} {
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
		objs, err := Render(Values{TokenID: id, TokenSecret: "0123456789abcdef", ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local", CoreDNSImage: "c:v1", MasterName: "m0"})
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
	if err := Apply(ctx, client, token("abcdef")); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Get(ctx, "bootstrap-token-abcdef", metav1.GetOptions{}); err != nil {
		t.Fatalf("first boot: %v", err)
	}
	// Applied again (a reboot): still there, untouched.
	if err := Apply(ctx, client, token("abcdef")); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Delete(ctx, "bootstrap-token-abcdef", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, client, token("abcdef")); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Get(ctx, "bootstrap-token-abcdef", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a deleted token came back at the next apply: %v", err)
	}
	if err := Apply(ctx, client, token("ghijkl")); err != nil {
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
