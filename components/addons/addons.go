// Package addons holds the objects kiln puts into every cluster
// (manifests.yaml: the bootstrap token, the RBAC that lets workers join,
// the node components' permissions, CoreDNS) and applies them with
// server-side apply. It links client-go, so only the node binary's
// component entry points import it.
package addons

import (
	"bytes"
	"context"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"text/template"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"kiln/configs/cluster"
)

// manifests.yaml comes first (the objects a join needs lead it), then
// the other files in name order: one file per add-on that has several
// objects (metrics.yaml, storage.yaml).
//
//go:embed *.yaml
var files embed.FS

// manifests is every file joined into one YAML stream.
var manifests = func() string {
	names, err := fs.Glob(files, "*.yaml")
	if err != nil {
		panic(err)
	}
	slices.SortFunc(names, func(a, b string) int {
		if (a == "manifests.yaml") != (b == "manifests.yaml") {
			if a == "manifests.yaml" {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	var docs []string
	for _, n := range names {
		b, err := files.ReadFile(n)
		if err != nil {
			panic(err)
		}
		docs = append(docs, strings.TrimRight(string(b), "\n"))
	}
	return strings.Join(docs, "\n---\n") + "\n"
}()

// Values fill in the manifests.
type Values struct {
	TokenID, TokenSecret string
	ClusterDNS           string // the kube-dns Service's IP
	ClusterDomain        string
	CoreDNSImage         string
	// MasterName is the master's node name, never granted to a joining
	// node.
	MasterName string
	// CABundle is the cluster CA's certificate (PEM): the aggregator
	// verifies the metrics-server against it.
	CABundle string
	// MetricsServerPort is the masters' metrics-server port on loopback.
	MetricsServerPort int
}

// Render returns the manifests' objects for these values.
func Render(v Values) ([]*unstructured.Unstructured, error) {
	if v.MasterName == "" {
		return nil, fmt.Errorf("addons: the master's name is required (it is reserved in kube-system/kiln-node-identities)")
	}
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

// JoinFirst splits the objects into those a worker's join needs and the
// rest, each in manifest order. The addons task applies the first group
// before the rest: a worker that boots with its master waits for exactly
// these (its token is refused until the token's Secret exists, its
// certificate request forbidden until system:bootstrappers may make one,
// and undecided until the csr-approver may read and bind names), so they
// go in as soon as the API serves, not after CoreDNS and the node
// components' permissions.
func JoinFirst(objs []*unstructured.Unstructured) (join, rest []*unstructured.Unstructured) {
	for _, o := range objs {
		if joinNeeds(o) {
			join = append(join, o)
		} else {
			rest = append(rest, o)
		}
	}
	return join, rest
}

// joinNeeds reports whether a worker's join needs o: the bootstrap
// token's Secret, the binding that lets bootstrappers ask for a
// certificate, the names already bound, and the csr-approver's rights.
func joinNeeds(o *unstructured.Unstructured) bool {
	if o.GetKind() == "Secret" && o.GetNamespace() == metav1.NamespaceSystem && strings.HasPrefix(o.GetName(), "bootstrap-token-") {
		return true
	}
	switch o.GetKind() + "/" + o.GetName() {
	case "ClusterRoleBinding/kiln:kubelet-bootstrap",
		"ConfigMap/kiln-node-identities",
		"ClusterRole/kiln:csr-approver", "ClusterRoleBinding/kiln:csr-approver",
		"Role/kiln:csr-approver", "RoleBinding/kiln:csr-approver":
		return true
	}
	return false
}

// resources maps the kinds the manifests use to their API resources.
var resources = map[string]schema.GroupVersionResource{
	"v1/Secret":                         {Version: "v1", Resource: "secrets"},
	"v1/ServiceAccount":                 {Version: "v1", Resource: "serviceaccounts"},
	"v1/ConfigMap":                      {Version: "v1", Resource: "configmaps"},
	"v1/Service":                        {Version: "v1", Resource: "services"},
	"rbac.authorization.k8s.io/v1/Role": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"rbac.authorization.k8s.io/v1/RoleBinding":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
	"apps/v1/Deployment":                              {Group: "apps", Version: "v1", Resource: "deployments"},
	"rbac.authorization.k8s.io/v1/ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"storage.k8s.io/v1/StorageClass":                  {Group: "storage.k8s.io", Version: "v1", Resource: "storageclasses"},
	"apiregistration.k8s.io/v1/APIService":            {Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"},
}

// OnceAnnotation marks an object that kiln creates once in the life of a
// cluster and never again: the bootstrap token's Secret, so that deleting
// it revokes the token for good instead of until the next master boot.
// Which objects were created is recorded in the ConfigMap OnceRecord in
// kube-system (deleting a key there lets kiln create that object again).
const (
	OnceAnnotation = "kiln.dev/apply"
	OnceRecord     = "kiln-applied-once"
)

// FieldManager is the server-side apply field manager of the add-ons a
// master applies: one per master, because each master applies its own
// name into kiln-node-identities, and with one shared manager every
// master's apply would drop the names the others own.
func FieldManager(masterName string) string { return "kiln/" + masterName }

// Apply applies every object with server-side apply (field manager
// manager, forcing ownership of the fields kiln sets), and creates the
// ones marked OnceAnnotation: once only if they were never created before.
func Apply(ctx context.Context, client dynamic.Interface, manager string, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		gvr, ok := resources[o.GetAPIVersion()+"/"+o.GetKind()]
		if !ok {
			return fmt.Errorf("addons: no resource known for %s %s", o.GetAPIVersion(), o.GetKind())
		}
		var ri dynamic.ResourceInterface = client.Resource(gvr)
		if ns := o.GetNamespace(); ns != "" {
			ri = client.Resource(gvr).Namespace(ns)
		}
		if o.GetAnnotations()[OnceAnnotation] == "once" {
			if err := createOnce(ctx, client, ri, o); err != nil {
				return err
			}
			continue
		}
		data, err := o.MarshalJSON()
		if err != nil {
			return err
		}
		force := true
		if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: manager, Force: &force}); err != nil {
			return fmt.Errorf("applying %s %s: %w", o.GetKind(), o.GetName(), err)
		}
	}
	return nil
}

// Transient reports whether Apply's error may pass by itself: no answer
// from the API server, a timeout, too many requests, a server error, or
// kube-system not created yet (the API server makes it just after it
// starts serving). A refused or invalid object is not.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		return true // no answer (connection refused, reset, timed out)
	}
	return apierrors.IsNotFound(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) ||
		st.Status().Code >= 500
}

// Retry says how ApplyRetrying retries: for how long, how often (zero: a
// second), and where it says so (nil: nowhere).
type Retry struct {
	For, Every time.Duration
	Out        io.Writer
}

// ApplyRetrying applies objs, again after a transient failure (Transient:
// the API server just started, kube-system not there yet, a timeout) for
// up to r.For. It says so on r.Out when it starts retrying and then every
// 30 s at most; a failure that is not transient is returned at once.
func ApplyRetrying(ctx context.Context, client dynamic.Interface, manager string, objs []*unstructured.Unstructured, r Retry) error {
	every := r.Every
	if every <= 0 {
		every = time.Second
	}
	start := time.Now()
	var lastLine time.Time
	for {
		err := Apply(ctx, client, manager, objs)
		if err == nil || !Transient(err) || ctx.Err() != nil || time.Since(start) >= r.For {
			return err
		}
		if r.Out != nil && (lastLine.IsZero() || time.Since(lastLine) >= 30*time.Second) {
			fmt.Fprintf(r.Out, "addons: retrying (%s so far): %v\n", time.Since(start).Round(time.Second), err)
			lastLine = time.Now()
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(every):
		}
	}
}

var configMaps = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}

// createOnce creates o unless OnceRecord says it was created before (then
// it is left alone: changed, deleted or not), and records it.
func createOnce(ctx context.Context, client dynamic.Interface, ri dynamic.ResourceInterface, o *unstructured.Unstructured) error {
	key := strings.ToLower(o.GetKind()) + "." + o.GetNamespace() + "." + o.GetName()
	records := client.Resource(configMaps).Namespace(metav1.NamespaceSystem)
	rec, err := records.Get(ctx, OnceRecord, metav1.GetOptions{})
	switch {
	case err == nil:
		if _, found, _ := unstructured.NestedString(rec.Object, "data", key); found {
			return nil
		}
	case apierrors.IsNotFound(err):
		rec = nil
	default:
		return fmt.Errorf("reading %s/%s: %w", metav1.NamespaceSystem, OnceRecord, err)
	}
	if _, err := ri.Create(ctx, o, metav1.CreateOptions{FieldManager: "kiln"}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating %s %s: %w", o.GetKind(), o.GetName(), err)
	}
	stamp := time.Now().UTC().Format(time.RFC3339)
	if rec == nil {
		cm := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": OnceRecord, "namespace": metav1.NamespaceSystem},
			"data":     map[string]any{key: stamp},
		}}
		_, err := records.Create(ctx, cm, metav1.CreateOptions{FieldManager: "kiln"})
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("recording %s in %s/%s: %w", key, metav1.NamespaceSystem, OnceRecord, err)
		}
	}
	patch := fmt.Sprintf(`{"data":{%q:%q}}`, key, stamp)
	if _, err := records.Patch(ctx, OnceRecord, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "kiln"}); err != nil {
		return fmt.Errorf("recording %s in %s/%s: %w", key, metav1.NamespaceSystem, OnceRecord, err)
	}
	return nil
}
