package components

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/plugin"
	pluginregistry "github.com/containerd/plugin/registry"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pelletier/go-toml/v2"

	// The CRI image plugin registers its (internal) config type: the
	// rendered file is decoded into the very struct containerd uses.
	_ "github.com/containerd/containerd/v2/plugins/cri/images"

	"kiln/configs/node"
	"kiln/images/oci"
	testregistry "kiln/internal/testutil/registry"
	"kiln/pki"
)

// criImageConfig is what these tests read of the CRI image plugin's
// config, decoded by containerd into its own type and passed on as JSON
// (the type is internal to containerd).
type criImageConfig struct {
	DiscardUnpackedLayers bool              `json:"discardUnpackedLayers"`
	PinnedImages          map[string]string `json:"pinned_images"`
	Registry              struct {
		ConfigPath string `json:"configPath"`
		Configs    map[string]struct {
			Auth *struct {
				Username      string `json:"username"`
				Password      string `json:"password"`
				Auth          string `json:"auth"`
				IdentityToken string `json:"identitytoken"`
			} `json:"auth"`
		} `json:"configs"`
	} `json:"registry"`
}

// loadCRIImageConfig reads a containerd.toml as containerd does (version
// 3) and decodes the CRI image plugin's section strictly into containerd's
// type: a key kiln misspells is an error here, where containerd would
// only log it.
func loadCRIImageConfig(t *testing.T, path string) criImageConfig {
	t.Helper()
	var cfg srvconfig.Config
	if err := srvconfig.LoadConfig(context.Background(), path, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Version != 3 {
		t.Fatalf("config version %d", cfg.Version)
	}
	const id = "io.containerd.cri.v1.images"
	var reg *plugin.Registration
	for _, r := range pluginregistry.Graph(func(*plugin.Registration) bool { return false }) {
		if r.URI() == id {
			reg = &r
		}
	}
	if reg == nil {
		t.Fatalf("containerd registered no %s plugin", id)
	}
	section, err := toml.Marshal(cfg.Plugins[id])
	if err != nil {
		t.Fatal(err)
	}
	real := reflect.New(reflect.TypeOf(reg.Config).Elem()).Interface()
	if err := toml.NewDecoder(bytes.NewReader(section)).DisallowUnknownFields().Decode(real); err != nil {
		t.Fatalf("%s: %v\n%s", id, err, section)
	}
	b, err := json.Marshal(real)
	if err != nil {
		t.Fatal(err)
	}
	var out criImageConfig
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// criCredentials answers for a host as the CRI plugin does when the
// kubelet sends no credentials (images.ParseAuth): username and password,
// or an identity token as the secret.
func criCredentials(c criImageConfig) func(string) (string, string, error) {
	return func(host string) (string, string, error) {
		a := c.Registry.Configs[host].Auth
		switch {
		case a == nil:
			return "", "", nil
		case a.Username != "":
			return a.Username, a.Password, nil
		default:
			return "", a.IdentityToken, nil
		}
	}
}

func prepareContainerd(t *testing.T, env *Env) criImageConfig {
	t.Helper()
	// Never change the test host's kernel settings.
	sysctlDir = t.TempDir()
	os.MkdirAll(filepath.Join(sysctlDir, "net/ipv4"), 0o755)
	if err := (Containerd{}).Prepare(env); err != nil {
		t.Fatal(err)
	}
	return loadCRIImageConfig(t, env.Path(containerdConfig))
}

func parseRegistries(t *testing.T, doc string) node.Registries {
	t.Helper()
	cfg, err := node.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return cfg.Registries
}

// indentPEM puts a PEM under a YAML block scalar at depth spaces.
func indentPEM(pem []byte, depth int) string {
	pad := strings.Repeat(" ", depth)
	return pad + strings.ReplaceAll(strings.TrimRight(string(pem), "\n"), "\n", "\n"+pad) + "\n"
}

// The files containerd reads, read by containerd's own code: the CRI
// config (config_path, the credentials per host) and the hosts
// directories (mirrors in order, then the registry unless said otherwise;
// the CA of each host).
func TestContainerdRegistryFiles(t *testing.T) {
	ca, err := pki.NewCA("registry CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "site-ca.pem")
	os.WriteFile(caFile, ca.CertPEM, 0o644)
	const password = "pa\"ss\\word with ünïcode"
	env := testEnv(t)
	env.Config.Registries = parseRegistries(t, `registries:
  mirrors:
    docker.io:
      endpoints: [https://mirror.example.com:5000, "http://10.0.0.5:5000/cache"]
    registry.internal:5000:
      endpoints: [https://a.example, https://b.example]
      upstream: false
    "*":
      endpoints: [https://mirror.example.com:5000]
  configs:
    mirror.example.com:5000:
      auth: {username: kiln, password: "pa\"ss\\word with ünïcode"}
      tls:
        ca: |
`+indentPEM(ca.CertPEM, 10)+`    b.example:
      tls: {caFile: `+caFile+`}
    docker.io:
      auth: {identityToken: hub-token}
    ghcr.io:
      tls: {caFile: `+caFile+`}
`)
	cri := prepareContainerd(t, env)

	info, err := os.Stat(env.Path(containerdConfig))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("containerd.toml: %v %v, want 0600 (it holds credentials)", info.Mode(), err)
	}
	hostsDir := env.Path(registryHostsDir)
	if cri.Registry.ConfigPath != hostsDir || !cri.DiscardUnpackedLayers || cri.PinnedImages["sandbox"] != oci.PauseRef {
		t.Errorf("CRI image config: %+v", cri)
	}
	auths := map[string]string{}
	for h, c := range cri.Registry.Configs {
		if c.Auth != nil {
			auths[h] = c.Auth.Username + "/" + c.Auth.Password + "/" + c.Auth.IdentityToken
		}
	}
	// docker.io's credentials go to the host containerd connects to.
	if want := map[string]string{"mirror.example.com:5000": "kiln/" + password + "/", "docker.io": "//hub-token", node.DockerHubHost: "//hub-token"}; !reflect.DeepEqual(auths, want) {
		t.Errorf("credentials %q, want %q", auths, want)
	}

	// The hosts containerd tries for each registry, in order.
	ctx := context.Background()
	hosts := dockerconfig.ConfigureHosts(ctx, dockerconfig.HostOptions{HostDir: dockerconfig.HostDirFromRoot(hostsDir)})
	pullResolve := docker.HostCapabilityPull | docker.HostCapabilityResolve
	all := pullResolve | docker.HostCapabilityPush | docker.HostCapabilityReferrers
	type host struct {
		url  string
		caps docker.HostCapabilities
		ca   bool // trusts the test CA
	}
	for _, tc := range []struct {
		registry string
		want     []host
	}{
		{"docker.io", []host{{"https://mirror.example.com:5000/v2", pullResolve, true}, {"http://10.0.0.5:5000/cache/v2", pullResolve, false}, {"https://registry-1.docker.io/v2", all, false}}},
		{"registry.internal:5000", []host{{"https://a.example/v2", pullResolve, false}, {"https://b.example/v2", pullResolve, true}}},
		// No entry of its own: "*" (containerd's _default), then itself.
		{"quay.io", []host{{"https://mirror.example.com:5000/v2", pullResolve, true}, {"https://quay.io/v2", all, false}}},
		// A CA for its own certificate: the "*" mirror still comes first.
		{"ghcr.io", []host{{"https://mirror.example.com:5000/v2", pullResolve, true}, {"https://ghcr.io/v2", all, true}}},
	} {
		rh, err := hosts(tc.registry)
		if err != nil {
			t.Fatalf("%s: %v", tc.registry, err)
		}
		var got []host
		for _, h := range rh {
			got = append(got, host{h.Scheme + "://" + h.Host + h.Path, h.Capabilities, trustsCA(h, ca)})
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: hosts\n%+v\nwant\n%+v", tc.registry, got, tc.want)
		}
	}

	// The credentials are in containerd.toml only.
	filepath.WalkDir(env.DataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		if p != env.Path(containerdConfig) && (bytes.Contains(b, []byte("hub-token")) || bytes.Contains(b, []byte("ünïcode"))) {
			t.Errorf("%s holds a credential", p)
		}
		return nil
	})

	// The next start writes the directories anew: a registry dropped
	// from the config loses its own.
	env.Config.Registries = parseRegistries(t, "registries:\n  mirrors:\n    quay.io: {endpoints: [https://q.example]}\n")
	prepareContainerd(t, env)
	ents, _ := os.ReadDir(hostsDir)
	var dirs []string
	for _, e := range ents {
		dirs = append(dirs, e.Name())
	}
	if !slices.Equal(dirs, []string{"quay.io"}) {
		t.Errorf("hosts directories after the change: %v", dirs)
	}
	b, _ := os.ReadFile(env.Path(containerdConfig))
	if bytes.Contains(b, []byte("hub-token")) {
		t.Error("containerd.toml keeps credentials the config dropped")
	}
	if _, err := os.Stat(hostsDir + ".new"); err == nil {
		t.Error("the temporary hosts tree is left behind")
	}
}

// trustsCA reports whether a host's client verifies a server certificate
// of ca.
func trustsCA(h docker.RegistryHost, ca *pki.CA) bool {
	tr, ok := h.Client.Transport.(*http.Transport)
	if !ok || tr.TLSClientConfig == nil || tr.TLSClientConfig.RootCAs == nil {
		return false
	}
	certPEM, _, err := ca.Issue(pki.CertRequest{CommonName: h.Host, DNSNames: []string{"x.example"}, Server: true})
	if err != nil {
		return false
	}
	cert, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		return false
	}
	_, err = cert.Verify(x509.VerifyOptions{DNSName: "x.example", Roots: tr.TLSClientConfig.RootCAs})
	return err == nil
}

// No registries: config_path is kiln's (empty) directory, not the host's
// /etc/containerd/certs.d, and no credentials.
func TestContainerdNoRegistries(t *testing.T) {
	env := testEnv(t)
	cri := prepareContainerd(t, env)
	if cri.Registry.ConfigPath != env.Path(registryHostsDir) || len(cri.Registry.Configs) != 0 {
		t.Errorf("registry config: %+v", cri.Registry)
	}
	if ents, err := os.ReadDir(env.Path(registryHostsDir)); err != nil || len(ents) != 0 {
		t.Errorf("hosts directory: %v %v", ents, err)
	}
}

// A CA file is a path on the node: checked when containerd is prepared,
// the error naming the field.
func TestContainerdRegistryCAFile(t *testing.T) {
	env := testEnv(t)
	dir := t.TempDir()
	key, _, _ := pki.NewKey()
	keyPEM, _ := pki.KeyPEM(key)
	os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600)
	for file, want := range map[string]string{
		"missing.pem": `registries.configs["r.example"].tls.caFile: ` + filepath.Join(dir, "missing.pem") + ": no such file",
		"key.pem":     `registries.configs["r.example"].tls.caFile: ` + filepath.Join(dir, "key.pem") + `: holds a "EC PRIVATE KEY" block`,
	} {
		env.Config.Registries = parseRegistries(t, "registries:\n  configs:\n    r.example: {tls: {caFile: "+filepath.Join(dir, file)+"}}\n")
		sysctlDir = t.TempDir()
		os.MkdirAll(filepath.Join(sysctlDir, "net/ipv4"), 0o755)
		err := (Containerd{}).Prepare(env)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", file, err, want)
		}
		if err != nil && strings.Contains(err.Error(), strings.Split(string(keyPEM), "\n")[1][:20]) {
			t.Errorf("the error shows the file's content: %v", err)
		}
	}
}

// tomlString writes what TOML reads back, whatever the characters.
func TestTOMLString(t *testing.T) {
	for _, s := range []string{"", `a"b\c`, "tab\tnew\nline\x00\x7f", "ünïcode ☃", `'single'`} {
		var v struct{ K string }
		if err := toml.Unmarshal([]byte("K = "+tomlString(s)+"\n"), &v); err != nil || v.K != s {
			t.Errorf("%q: read back %q, %v", s, v.K, err)
		}
	}
}

// Pulls through containerd's own resolver and fetcher, configured from the
// files kiln writes, from real registries on loopback: through a mirror
// over HTTPS with its own CA and credentials, through a plain-HTTP mirror
// said so, and with a wrong password the registry's 401.
func TestContainerdPullsThroughRegistries(t *testing.T) {
	private := testregistry.Start(t, testregistry.Options{TLS: true, Username: "kiln", Password: "right"})
	plain := testregistry.Start(t, testregistry.Options{})
	other := testregistry.Start(t, testregistry.Options{TLS: true})
	bin := filepath.Join(t.TempDir(), "hello")
	os.WriteFile(bin, []byte("a program\n"), 0o755)
	img, err := testregistry.Image(oci.Image{Ref: "kiln.test/hello:v1", Binary: "hello"}, bin, map[string]string{"kiln.test/pulled": "yes"})
	if err != nil {
		t.Fatal(err)
	}
	digest, err := private.Push("kiln/hello:v1", img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Push("kiln/hello:v1", img); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(private.Addr)
	// The same registry under a second name (its certificate holds
	// localhost too), with a wrong password.
	wrongHost := "localhost:" + port
	env := testEnv(t)
	env.Config.Registries = parseRegistries(t, `registries:
  mirrors:
    registry.kiln.test:
      endpoints: [`+private.URL()+`]
      upstream: false
    plain.kiln.test:
      endpoints: [`+plain.URL()+`]
      upstream: false
    wrong.kiln.test:
      endpoints: [https://`+wrongHost+`]
      upstream: false
    noca.kiln.test:
      endpoints: [`+other.URL()+`]
      upstream: false
  configs:
    `+private.Addr+`:
      auth: {username: kiln, password: right}
      tls:
        ca: |
`+indentPEM(private.CAPEM, 10)+`    `+wrongHost+`:
      auth: {username: kiln, password: not-the-password}
      tls:
        ca: |
`+indentPEM(private.CAPEM, 10))
	cri := prepareContainerd(t, env)
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: dockerconfig.ConfigureHosts(context.Background(), dockerconfig.HostOptions{
		HostDir:     dockerconfig.HostDirFromRoot(cri.Registry.ConfigPath),
		Credentials: criCredentials(cri),
	})})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, ref := range []string{"registry.kiln.test/kiln/hello:v1", "plain.kiln.test/kiln/hello:v1"} {
		name, desc, err := resolver.Resolve(ctx, ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if desc.Digest.String() != digest.String() {
			t.Errorf("%s: resolved %s, pushed %s", ref, desc.Digest, digest)
		}
		// The manifest, then the config it names: a pull's first steps.
		f, err := resolver.Fetcher(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := f.Fetch(ctx, desc)
		if err != nil {
			t.Fatalf("%s: manifest: %v", ref, err)
		}
		var m ocispec.Manifest
		err = json.NewDecoder(rc).Decode(&m)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		rc, err = f.Fetch(ctx, m.Config)
		if err != nil {
			t.Fatalf("%s: config: %v", ref, err)
		}
		cfg, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Contains(cfg, []byte(`"kiln.test/pulled":"yes"`)) {
			t.Errorf("%s: config %s", ref, cfg)
		}
	}
	if private.Served("GET /v2/kiln/hello/manifests/", " 200") == 0 && private.Served("HEAD /v2/kiln/hello/manifests/", " 200") == 0 {
		t.Errorf("the mirror served no manifest: %v", private.Requests())
	}
	_, _, err = resolver.Resolve(ctx, "wrong.kiln.test/kiln/hello:v1")
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") {
		t.Errorf("a wrong password: %v, want the registry's 401", err)
	}
	if err != nil && strings.Contains(err.Error(), "not-the-password") {
		t.Errorf("the error shows the password: %v", err)
	}
	// A registry of another CA, which the config does not give: its
	// certificate is refused (the image has no CA but those the config
	// gives).
	_, _, err = resolver.Resolve(ctx, "noca.kiln.test/kiln/hello:v1")
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("a registry of an unknown CA: %v", err)
	}
}
