package cluster

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestBatchToken(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	tok, err := NewBatchToken(24*time.Hour, `rack 2 "east"`, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := ValidateBootstrapToken(tok.String()); err != nil {
		t.Fatalf("%s: %v", tok, err)
	}
	out := tok.SecretYAML("out/cluster/admin.kubeconfig")
	var doc struct {
		Kind     string
		Type     string
		Metadata struct{ Name, Namespace string }
		Data     map[string]string `yaml:"stringData"`
	}
	if err := yaml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if doc.Kind != "Secret" || doc.Type != "bootstrap.kubernetes.io/token" ||
		doc.Metadata.Name != "bootstrap-token-"+tok.ID || doc.Metadata.Namespace != "kube-system" {
		t.Errorf("secret: %+v", doc)
	}
	for k, want := range map[string]string{
		"token-id": tok.ID, "token-secret": tok.Secret, "expiration": "2026-12-02T10:00:00Z",
		"usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
		"auth-extra-groups": WorkerTokenGroup, "description": `rack 2 "east"`,
	} {
		if doc.Data[k] != want {
			t.Errorf("%s = %q, want %q", k, doc.Data[k], want)
		}
	}
	if !strings.Contains(string(out), "kiln build --role worker --token "+tok.String()) {
		t.Errorf("no usage in the header:\n%s", out)
	}

	forever, _ := NewBatchToken(0, "", now)
	if s := string(forever.SecretYAML("k")); strings.Contains(s, "expiration") || !strings.Contains(s, "never expires") {
		t.Errorf("a token without ttl:\n%s", s)
	}
	for _, bad := range []string{"", "abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef", "abcdef.0123456789abcde!"} {
		if ValidateBootstrapToken(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
