package cluster

import (
	"fmt"
	"strings"
	"time"

	"kiln/pki"
)

// WorkerTokenGroup is the extra group of kiln's bootstrap tokens: a kubelet
// joining with one is system:bootstrap:<id> in system:bootstrappers and in
// this group (components/addons/manifests.yaml gives the cluster's own
// token the same).
const WorkerTokenGroup = "system:bootstrappers:kiln:worker"

// BatchToken is a bootstrap token made apart from the cluster directory,
// for one batch of workers, usually with an expiry.
type BatchToken struct {
	ID, Secret  string
	Expires     time.Time // zero: never
	Description string
}

// NewBatchToken makes a random token; ttl 0 means it never expires.
func NewBatchToken(ttl time.Duration, description string, now time.Time) (BatchToken, error) {
	id, secret, err := pki.NewBootstrapToken()
	if err != nil {
		return BatchToken{}, err
	}
	t := BatchToken{ID: id, Secret: secret, Description: description}
	if ttl > 0 {
		t.Expires = now.Add(ttl).UTC().Truncate(time.Second)
	}
	return t, nil
}

// String is the token as workers use it: "<id>.<secret>".
func (t BatchToken) String() string { return t.ID + "." + t.Secret }

// SecretYAML is the token as a Kubernetes bootstrap token Secret (the
// format the API server's bootstrap authenticator reads), for kubectl
// apply. A header of comments says how to use it.
func (t BatchToken) SecretYAML(kubeconfig string) []byte {
	var b strings.Builder
	until := "never expires"
	if !t.Expires.IsZero() {
		until = "valid until " + t.Expires.Format(time.RFC3339)
	}
	fmt.Fprintf(&b, "# kiln gen token: bootstrap token %s for joining workers (%s).\n", t, until)
	fmt.Fprintf(&b, "#   kubectl --kubeconfig %s apply -f <this file>\n", kubeconfig)
	fmt.Fprintf(&b, "#   kiln build --role worker --token %s ...\n", t)
	fmt.Fprintf(&b, "# Delete the Secret to stop joins with it: kubectl -n kube-system delete secret bootstrap-token-%s\n", t.ID)
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-%s\n  namespace: kube-system\n", t.ID)
	b.WriteString("type: bootstrap.kubernetes.io/token\nstringData:\n")
	fmt.Fprintf(&b, "  token-id: %q\n  token-secret: %q\n", t.ID, t.Secret)
	if !t.Expires.IsZero() {
		fmt.Fprintf(&b, "  expiration: %q\n", t.Expires.Format(time.RFC3339))
	}
	b.WriteString("  usage-bootstrap-authentication: \"true\"\n  usage-bootstrap-signing: \"true\"\n")
	fmt.Fprintf(&b, "  auth-extra-groups: %q\n", WorkerTokenGroup)
	if t.Description != "" {
		fmt.Fprintf(&b, "  description: %q\n", t.Description)
	}
	return []byte(b.String())
}
