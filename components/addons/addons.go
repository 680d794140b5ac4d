// Package addons holds the objects kiln puts into every cluster
// (manifests.yaml: the bootstrap token, the RBAC that lets workers join,
// the node components' permissions, CoreDNS) and applies them with
// server-side apply. It links client-go, so only the node binary's
// component entry points import it.
package addons

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/base64"
	"fmt"
	"strings"
	"text/template"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"kiln/configs/cluster"
)

//go:embed manifests.yaml
var manifests string

// Values fill in the manifests.
type Values struct {
	TokenID, TokenSecret string
	ClusterDNS           string // the kube-dns Service's IP
	ClusterDomain        string
	CoreDNSImage         string
}

// Render returns the manifests' objects for these values.
func Render(v Values) ([]*unstructured.Unstructured, error) {
	t, err := template.New("manifests").Funcs(template.FuncMap{
		"b64":        func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
		"tokenGroup": func() string { return cluster.WorkerTokenGroup },
	}).Option("missingkey=error").Parse(manifests)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, v); err != nil {
		return nil, err
	}
	var objs []*unstructured.Unstructured
	for _, doc := range strings.Split(buf.String(), "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			return nil, fmt.Errorf("manifests: %w", err)
		}
		if len(m) == 0 {
			continue // the header comment
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs, nil
}

// resources maps the kinds the manifests use to their API resources.
var resources = map[string]schema.GroupVersionResource{
	"v1/Secret":          {Version: "v1", Resource: "secrets"},
	"v1/ServiceAccount":  {Version: "v1", Resource: "serviceaccounts"},
	"v1/ConfigMap":       {Version: "v1", Resource: "configmaps"},
	"v1/Service":         {Version: "v1", Resource: "services"},
	"apps/v1/Deployment": {Group: "apps", Version: "v1", Resource: "deployments"},
	"rbac.authorization.k8s.io/v1/ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
}

// Apply applies every object with server-side apply (field manager "kiln",
// forcing ownership of the fields kiln sets).
func Apply(ctx context.Context, client dynamic.Interface, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		gvr, ok := resources[o.GetAPIVersion()+"/"+o.GetKind()]
		if !ok {
			return fmt.Errorf("addons: no resource known for %s %s", o.GetAPIVersion(), o.GetKind())
		}
		data, err := o.MarshalJSON()
		if err != nil {
			return err
		}
		force := true
		var ri dynamic.ResourceInterface = client.Resource(gvr)
		if ns := o.GetNamespace(); ns != "" {
			ri = client.Resource(gvr).Namespace(ns)
		}
		if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: "kiln", Force: &force}); err != nil {
			return fmt.Errorf("applying %s %s: %w", o.GetKind(), o.GetName(), err)
		}
	}
	return nil
}
