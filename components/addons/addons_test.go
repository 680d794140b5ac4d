package addons

import (
	"encoding/base64"
	"testing"

	"kiln/configs/cluster"
)

func TestRender(t *testing.T) {
	objs, err := Render(Values{TokenID: "abcdef", TokenSecret: "0123456789abcdef", ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local", CoreDNSImage: "kiln.local/coredns:v1"})
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
	for _, want := range []string{"ClusterRoleBinding/kiln:kubelet-bootstrap", "ClusterRoleBinding/kiln:node-autoapprove-bootstrap",
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
