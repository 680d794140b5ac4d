package node

import (
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"kiln/pki"
)

func testCAPEM(t testing.TB) string {
	t.Helper()
	ca, err := pki.NewCA("registry test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return string(ca.CertPEM)
}

// indent puts text under a YAML block scalar at depth spaces.
func indent(s string, depth int) string {
	pad := strings.Repeat(" ", depth)
	return pad + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+pad) + "\n"
}

func TestRegistriesParse(t *testing.T) {
	ca := testCAPEM(t)
	doc := `registries:
  mirrors:
    docker.io:
      endpoints:
      - https://mirror.example.com:5000
      - http://10.0.0.5:5000/cache
    registry.internal:5000:
      endpoints: [https://10.0.0.6]
      upstream: false
    "*":
      endpoints: [https://mirror.example.com:5000]
  configs:
    mirror.example.com:5000:
      auth:
        username: kiln
        password: "p@ss: word"
      tls:
        ca: |
` + indent(ca, 10) + `    docker.io:
      auth: {identityToken: tok}
    "[fd00::6]:443":
      tls: {caFile: /etc/kiln/registry-ca.pem}
`
	cfg, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Registries
	f := false
	want := Registries{
		Mirrors: map[string]Mirror{
			"docker.io":              {Endpoints: []string{"https://mirror.example.com:5000", "http://10.0.0.5:5000/cache"}},
			"registry.internal:5000": {Endpoints: []string{"https://10.0.0.6"}, Upstream: &f},
			"*":                      {Endpoints: []string{"https://mirror.example.com:5000"}},
		},
		Configs: map[string]RegistryConfig{
			"mirror.example.com:5000": {Auth: &RegistryAuth{Username: "kiln", Password: "p@ss: word"}, TLS: &RegistryTLS{CA: ca}},
			"docker.io":               {Auth: &RegistryAuth{IdentityToken: "tok"}},
			"[fd00::6]:443":           {TLS: &RegistryTLS{CAFile: "/etc/kiln/registry-ca.pem"}},
		},
	}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("got %+v\nwant %+v", r, want)
	}
	if !r.Mirrors["docker.io"].UsesUpstream() || r.Mirrors["registry.internal:5000"].UsesUpstream() {
		t.Error("upstream: default true, false when said")
	}
	if m, ok := r.MirrorFor("quay.io"); !ok || m.Endpoints[0] != "https://mirror.example.com:5000" {
		t.Errorf("quay.io falls back to the \"*\" mirror: %+v %v", m, ok)
	}
	if c, ok := r.ConfigFor(DockerHubHost); !ok || c.Auth.IdentityToken != "tok" {
		t.Errorf("docker.io's config stands for %s: %+v %v", DockerHubHost, c, ok)
	}
	if UpstreamURL("docker.io") != "https://registry-1.docker.io" || UpstreamURL("r.example:5000") != "https://r.example:5000" {
		t.Error("UpstreamURL")
	}
	if err := r.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
	// What a host tool writes (a config layer) reads back the same.
	out, err := yaml.Marshal(struct {
		APIVersion string     `yaml:"apiVersion"`
		Kind       string     `yaml:"kind"`
		Registries Registries `yaml:"registries"`
	}{APIVersion, Kind, r})
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !reflect.DeepEqual(again.Registries, r) {
		t.Errorf("round trip:\n%s\ngot %+v", out, again.Registries)
	}
	if def := Default(); def.Registries.Mirrors != nil || def.Registries.Configs != nil {
		t.Error("the default config has registries")
	}
}

// Layers merge registry by registry: an entry replaces the earlier one
// whole, null keeps it, and the earlier layer is never written.
func TestRegistriesOverlay(t *testing.T) {
	baseDoc := `registries:
  mirrors:
    docker.io: {endpoints: [https://a.example]}
    quay.io: {endpoints: [https://q.example]}
  configs:
    a.example: {auth: {username: u, password: p}}
`
	base, err := Parse([]byte(baseDoc))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, doc string
		check     func(r Registries) bool
	}{
		{"a new mirror, another replaced", "registries:\n  mirrors:\n    docker.io: {endpoints: [https://b.example]}\n    ghcr.io: {endpoints: [https://g.example]}\n",
			func(r Registries) bool {
				return reflect.DeepEqual(r.Mirrors["docker.io"].Endpoints, []string{"https://b.example"}) && len(r.Mirrors) == 3 && r.Configs["a.example"].Auth.Username == "u"
			}},
		{"null entry keeps", "registries:\n  mirrors:\n    docker.io: null\n    quay.io: {endpoints: [https://r.example]}\n",
			func(r Registries) bool {
				return r.Mirrors["docker.io"].Endpoints[0] == "https://a.example" && r.Mirrors["quay.io"].Endpoints[0] == "https://r.example"
			}},
		{"mirrors: null keeps", "registries:\n  mirrors:\n  configs:\n    a.example: {auth: {identityToken: t}}\n",
			func(r Registries) bool {
				return len(r.Mirrors) == 2 && r.Configs["a.example"].Auth.Username == "" && r.Configs["a.example"].Auth.IdentityToken == "t"
			}},
		{"registries: null keeps", "registries:\n", func(r Registries) bool { return reflect.DeepEqual(r, base.Registries) }},
		{"other fields only", "hostname: x\n", func(r Registries) bool { return reflect.DeepEqual(r, base.Registries) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Overlay(base, []byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(got.Registries) {
				t.Errorf("got %+v", got.Registries)
			}
			fresh, _ := Parse([]byte(baseDoc))
			if !reflect.DeepEqual(base, fresh) {
				t.Errorf("Overlay changed its base: %+v", base.Registries)
			}
		})
	}
	// A mirror of the earlier layer meets a host config of the later one.
	plain, err := Parse([]byte("registries:\n  mirrors:\n    docker.io: {endpoints: [http://m.example:5000]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Overlay(plain, []byte("registries:\n  configs:\n    m.example:5000: {auth: {username: u, password: p}}\n"))
	if err == nil || !strings.Contains(err.Error(), "clear text") {
		t.Errorf("credentials for a plain-HTTP mirror of an earlier layer: %v", err)
	}
}

func TestRegistriesErrors(t *testing.T) {
	ca := testCAPEM(t)
	for _, tc := range []struct {
		name, doc string
		want      []string // substrings of the error
	}{
		{"not a mapping", "registries: [a]\n", []string{"line 1", "cannot unmarshal a list into node.Registries"}},
		{"unknown field", "registries:\n  mirror: {}\n", []string{"line 2", `unknown field "mirror"`}},
		{"k3s spelling", "registries:\n  mirrors:\n    docker.io:\n      endpoint: [https://m.example]\n", []string{"line 4", `unknown field "endpoint"`, "endpoints, a list"}},
		{"unknown nested field", "registries:\n  configs:\n    m.example:\n      tls: {insecureSkipVerify: true}\n", []string{"line 4", `unknown field "insecureSkipVerify"`}},
		{"wrong type", "registries:\n  mirrors:\n    docker.io: {endpoints: [https://m.example], upstream: maybe}\n", []string{"line 3", "maybe", "bool"}},
		{"duplicate key", "registries:\n  mirrors:\n    docker.io: {endpoints: [https://m.example]}\n    docker.io: {endpoints: [https://n.example]}\n", []string{"line 4", `"docker.io" already defined at line 3`}},
		{"registry as URL", "registries:\n  mirrors:\n    https://docker.io: {endpoints: [https://m.example]}\n", []string{`registries.mirrors["https://docker.io"]`, "without a scheme"}},
		{"bad port", "registries:\n  configs:\n    m.example:99999: {auth: {identityToken: t}}\n", []string{`registries.configs["m.example:99999"]`, "no valid port"}},
		{"bare IPv6", "registries:\n  configs:\n    fd00::1: {auth: {identityToken: t}}\n", []string{"in brackets"}},
		{"no endpoints", "registries:\n  mirrors:\n    docker.io: {upstream: false}\n", []string{`registries.mirrors["docker.io"].endpoints: empty`, "https://mirror.example.com:5000"}},
		{"no scheme", "registries:\n  mirrors:\n    docker.io: {endpoints: [m.example:5000]}\n", []string{`registries.mirrors["docker.io"].endpoints[0]: "m.example:5000" has no scheme`, "https://", "http://"}},
		{"ftp", "registries:\n  mirrors:\n    docker.io: {endpoints: [\"ftp://m.example\"]}\n", []string{`endpoints[0]`, `scheme "ftp"`}},
		{"query", "registries:\n  mirrors:\n    docker.io: {endpoints: [\"https://m.example/?a=b\"]}\n", []string{"query"}},
		{"duplicate endpoint", "registries:\n  mirrors:\n    docker.io: {endpoints: [https://m.example, https://m.example]}\n", []string{"endpoints[1]", "already endpoints[0]"}},
		{"empty config", "registries:\n  configs:\n    m.example: {}\n", []string{`registries.configs["m.example"]: empty`}},
		{"half auth", "registries:\n  configs:\n    m.example: {auth: {username: u}}\n", []string{`registries.configs["m.example"].auth: give username and password (both), or identityToken`}},
		{"token with username", "registries:\n  configs:\n    m.example: {auth: {username: u, password: p, identityToken: t}}\n", []string{"identityToken goes alone"}},
		{"colon in username", "registries:\n  configs:\n    m.example: {auth: {username: \"a:b\", password: p}}\n", []string{"auth.username", "colon"}},
		{"both CAs", "registries:\n  configs:\n    m.example: {tls: {ca: x, caFile: /ca.pem}}\n", []string{"tls: give ca", "not both"}},
		{"no CA", "registries:\n  configs:\n    m.example: {tls: {}}\n", []string{"tls: give ca"}},
		{"CA not PEM", "registries:\n  configs:\n    m.example: {tls: {ca: hello}}\n", []string{"tls.ca: holds no PEM certificate"}},
		{"CA with a key", "registries:\n  configs:\n    m.example:\n      tls:\n        ca: |\n" + indent(ca+"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n", 10),
			[]string{`holds a "EC PRIVATE KEY" block`}},
		{"relative caFile", "registries:\n  configs:\n    m.example: {tls: {caFile: ca.pem}}\n", []string{"tls.caFile", "absolute"}},
		{"TLS on plain HTTP", "registries:\n  mirrors:\n    docker.io: {endpoints: [\"http://m.example:5000\"]}\n  configs:\n    m.example:5000: {tls: {caFile: /ca.pem}}\n",
			[]string{`registries.mirrors["docker.io"].endpoints[0]: "http://m.example:5000" is plain HTTP`, "gives it a CA", "https://m.example:5000"}},
		{"a wildcard config", "registries:\n  configs:\n    \"*\": {auth: {identityToken: t}}\n", []string{`registries.configs["*"]`, "not a host"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// Credentials never show: not in an error, not in a config printed with
// fmt or slog.
func TestRegistrySecretsNeverPrinted(t *testing.T) {
	const pw, tok = "hunter2-correct-horse", "identity-token-zzz"
	for _, doc := range []string{
		"registries:\n  configs:\n    m.example: {auth: {username: u, password: \"" + pw + "\\n\"}}\n",
		"registries:\n  configs:\n    m.example: {auth: {username: u, password: " + pw + ", identityToken: " + tok + "}}\n",
		"registries:\n  mirrors:\n    docker.io: {endpoints: [\"https://u:" + pw + "@m.example\"]}\n",
		"registries:\n  mirrors:\n    docker.io: {endpoints: [\"http://m.example\"]}\n  configs:\n    m.example: {auth: {username: u, password: " + pw + "}}\n",
		// The decoder would echo a value it cannot read as the tag says.
		"registries:\n  configs:\n    m.example: {auth: {username: u, password: !!int " + pw + "}}\n",
		"registries:\n  configs:\n    m.example: {auth: {identityToken: !!binary " + tok + "}}\n",
		"registries:\n  configs:\n    m.example: {auth: {username: u, password: [" + pw + "]}}\n",
	} {
		_, err := Parse([]byte(doc))
		if err == nil {
			t.Errorf("%q: no error", doc)
			continue
		}
		if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), tok) {
			t.Errorf("the error shows a secret: %v", err)
		}
	}
	cfg, err := Parse([]byte("registries:\n  configs:\n    m.example: {auth: {username: u, password: " + pw + "}}\n    n.example: {auth: {identityToken: " + tok + "}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("config", "password", cfg.Registries.Configs["m.example"].Auth.Password)
	for _, s := range []string{fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg.Registries.Configs["n.example"].Auth.IdentityToken),
		fmt.Sprintf("%+v %#v", *cfg.Registries.Configs["m.example"].Auth, *cfg.Registries.Configs["n.example"].Auth), logged.String()} {
		if strings.Contains(s, pw) || strings.Contains(s, tok) {
			t.Errorf("printed: %s", s)
		}
	}
	if got := cfg.Registries.Configs["m.example"].Auth.Password; string(got) != pw {
		t.Errorf("the value itself is kept: %d bytes", len(got))
	}
}

// Only the config's registries spelling gets the endpoints hint.
func TestRegistriesEndpointHint(t *testing.T) {
	if _, err := Parse([]byte("endpoint: x\n")); err == nil || strings.Contains(err.Error(), "endpoints") || !strings.Contains(err.Error(), `unknown field "endpoint" (see configs/README.md`) {
		t.Errorf("a top-level endpoint: %v", err)
	}
}

// Clone copies the registries deeply: an Overlay's base or a caller's
// config is never written through a copy.
func TestRegistriesClone(t *testing.T) {
	cfg, err := Parse([]byte("registries:\n  mirrors:\n    docker.io: {endpoints: [https://a.example], upstream: false}\n  configs:\n    a.example: {auth: {username: u, password: p}, tls: {caFile: /ca.pem}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	before := cfg.Clone()
	c := cfg.Clone()
	if !reflect.DeepEqual(c, cfg) {
		t.Fatalf("clone differs: %+v", c.Registries)
	}
	m := c.Registries.Mirrors["docker.io"]
	m.Endpoints[0] = "https://b.example"
	*m.Upstream = true
	a := c.Registries.Configs["a.example"]
	a.Auth.Password = "q"
	a.TLS.CAFile = "/other.pem"
	c.Registries.Mirrors["quay.io"] = Mirror{Endpoints: []string{"https://q.example"}}
	delete(c.Registries.Configs, "a.example")
	if !reflect.DeepEqual(cfg, before) {
		t.Errorf("a change to the clone reached the original: %+v", cfg.Registries)
	}
}

// Config.Validate checks the registries: a config built in Go, or the
// result of merged layers.
func TestConfigValidateRegistries(t *testing.T) {
	cfg := Default()
	cfg.Registries.Mirrors = map[string]Mirror{"docker.io": {Endpoints: []string{"http://m.example"}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Registries.Configs = map[string]RegistryConfig{"m.example": {Auth: &RegistryAuth{Username: "u", Password: "hunter2"}}}
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), `registries.mirrors["docker.io"].endpoints[0]`) || !strings.Contains(err.Error(), "clear text") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("credentials for a plain-HTTP mirror: %v", err)
	}
}

// A Registries built in Go is checked as a document is.
func TestRegistriesValidate(t *testing.T) {
	if err := (Registries{}).Validate(); err != nil {
		t.Error(err)
	}
	r := Registries{
		Mirrors: map[string]Mirror{"docker.io": {Endpoints: []string{"m.example"}}, "bad host!": {Endpoints: []string{"https://m.example"}}},
		Configs: map[string]RegistryConfig{"m.example": {}},
	}
	err := r.Validate()
	for _, w := range []string{`registries.mirrors["docker.io"].endpoints[0]: "m.example" has no scheme`, `registries.mirrors["bad host!"]: "bad host!" is not a host`, `registries.configs["m.example"]: empty`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
}

// Aliases cannot make the decoding walk forever (yaml.v3's own guards:
// an anchor that contains itself, excessive aliasing).
func TestRegistriesAliases(t *testing.T) {
	var b strings.Builder
	b.WriteString("x: &a {auth: {identityToken: t}}\n")
	b.WriteString("registries:\n  configs:\n")
	for i := range 2000 {
		fmt.Fprintf(&b, "    h%d.example: *a\n", i)
	}
	// x is an unknown field: said, after 2000 expansions of a.
	if _, err := Parse([]byte(b.String())); err == nil || !strings.Contains(err.Error(), `unknown field "x"`) {
		t.Errorf("aliases: %.300v", err)
	}
	for _, doc := range []string{"registries: &r {mirrors: *r}\n", "registries:\n  configs: &c\n    a.example: *c\n"} {
		if _, err := Parse([]byte(doc)); err == nil {
			t.Errorf("%q: no error", doc)
		}
	}
	cfg, err := Parse([]byte("registries:\n  configs:\n    a.example: &c {auth: {identityToken: t}}\n    b.example: *c\n"))
	if err != nil || cfg.Registries.Configs["b.example"].Auth.IdentityToken != "t" {
		t.Errorf("a shared entry: %v %+v", err, cfg.Registries)
	}
}

// The registries section never panics the parser, whatever the bytes;
// what it accepts passes Validate, and its errors stay short.
func FuzzRegistries(f *testing.F) {
	for _, s := range []string{
		"registries:\n  mirrors:\n    docker.io: {endpoints: [https://m.example:5000], upstream: false}\n",
		"registries:\n  configs:\n    m.example: {auth: {username: u, password: p}, tls: {caFile: /ca.pem}}\n",
		"registries:\n  mirrors:\n    \"*\": {endpoints: [\"http://[fd00::1]:5000/x\"]}\n",
		"registries: &r {mirrors: *r}\n", "registries:\n  mirrors:\n    docker.io: null\n",
		"registries:\n  configs: &c\n    a.example: *c\n",
	} {
		f.Add([]byte(s))
	}
	base, err := Parse([]byte("registries:\n  mirrors:\n    docker.io: {endpoints: [https://a.example]}\n"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Overlay(base, data)
		if err != nil {
			if len(err.Error()) > 4096 {
				t.Errorf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if err := cfg.Registries.Validate(); err != nil {
			t.Errorf("accepted invalid registries: %v", err)
		}
	})
}
