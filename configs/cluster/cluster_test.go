package cluster

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"kiln/pki"
)

func generate(t *testing.T, opts Options) (string, *Cluster) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cluster")
	if opts.Name == "" {
		opts.Name = "test"
	}
	c, err := Generate(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return dir, c
}

func TestGenerateLoad(t *testing.T) {
	dir, gen := generate(t, Options{Name: "prod-1", Endpoint: "10.0.0.5:6443"})
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	for _, f := range []struct{ name, got, want string }{
		{"Dir", c.Dir, abs},
		{"Name", c.Name, "prod-1"},
		{"Endpoint", c.Endpoint, "https://10.0.0.5:6443"},
		{"ServiceCIDR", c.ServiceCIDR, "10.96.0.0/12"},
		{"PodCIDR", c.PodCIDR, "10.244.0.0/16"},
		{"ClusterDNS", c.ClusterDNS, "10.96.0.10"},
		{"ClusterDomain", c.ClusterDomain, "cluster.local"},
		{"CAHash", c.CAHash, pki.CAHash(c.CA.Cert)},
		{"BootstrapToken", c.BootstrapToken, gen.BootstrapToken},
		{"Generate vs Load CAHash", gen.CAHash, c.CAHash},
	} {
		if f.got != f.want {
			t.Errorf("%s = %q, want %q", f.name, f.got, f.want)
		}
	}
	if time.Since(c.Created) > time.Minute || time.Since(c.Created) < -time.Minute {
		t.Errorf("Created = %v", c.Created)
	}
	if !regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`).MatchString(c.BootstrapToken) {
		t.Errorf("token %q", c.BootstrapToken)
	}
	if c.BootstrapTokenID() != c.BootstrapToken[:6] {
		t.Errorf("BootstrapTokenID %q", c.BootstrapTokenID())
	}
	if len(c.EncryptionKey) != 32 || bytes.Equal(c.EncryptionKey, make([]byte, 32)) {
		t.Errorf("encryption key %x", c.EncryptionKey)
	}
	for name, ca := range map[string]*pki.CA{"kiln-ca": c.CA, "kiln-etcd-ca": c.EtcdCA, "kiln-front-proxy-ca": c.FrontProxyCA} {
		if ca == nil || ca.Key == nil || ca.Cert.Subject.CommonName != name || !pki.KeyMatches(ca.Cert, ca.Key) {
			t.Errorf("CA %s not loaded right", name)
		}
	}
	if c.CA.Cert.Equal(c.EtcdCA.Cert) || c.CA.Cert.Equal(c.FrontProxyCA.Cert) {
		t.Error("CAs are not distinct")
	}
	if c.ServiceAccountKey == nil || len(c.ServiceAccountPubPEM) == 0 {
		t.Error("service-account key missing")
	}
	if c.EndpointHostPort() != "10.0.0.5:6443" {
		t.Errorf("EndpointHostPort %q", c.EndpointHostPort())
	}
	p := c.Paths()
	if p.CAKey != filepath.Join(abs, "pki", "ca.key") || p.EtcdCACert != filepath.Join(abs, "pki", "etcd", "ca.crt") ||
		p.BootstrapToken != filepath.Join(abs, "secrets", "bootstrap-token") || p.Config != filepath.Join(abs, "cluster.yaml") {
		t.Errorf("Paths: %+v", p)
	}
	// cluster.yaml is readable by a person: fields in order, a comment.
	data, _ := os.ReadFile(p.Config)
	if !bytes.HasPrefix(data, []byte("# The cluster prod-1")) || !bytes.Contains(data, []byte("apiVersion: \"kiln.dev/v1alpha1\"\nkind: \"Cluster\"\nname: \"prod-1\"\n")) {
		t.Errorf("cluster.yaml:\n%s", data)
	}
}

func TestGenerateOptions(t *testing.T) {
	_, c := generate(t, Options{Name: "no", ServiceCIDR: "10.100.0.0/16", PodCIDR: "192.168.0.0/16", Endpoint: "https://api.example.com:443"})
	if c.Name != "no" || c.ServiceCIDR != "10.100.0.0/16" || c.PodCIDR != "192.168.0.0/16" || c.ClusterDNS != "10.100.0.10" ||
		c.Endpoint != "https://api.example.com:443" {
		t.Errorf("%+v", c)
	}
	_, c = generate(t, Options{Name: "v6", ServiceCIDR: "fd00:10:96::/112", PodCIDR: "fd00:10:244::/56", Endpoint: "[::1]:6443"})
	if c.ClusterDNS != "fd00:10:96::a" || c.Endpoint != "https://[::1]:6443" {
		t.Errorf("%+v", c)
	}
}

func TestGenerateRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want []string
	}{
		{"no name", Options{}, []string{"cluster name is empty"}},
		{"upper case name", Options{Name: "Prod"}, []string{`"Prod"`, "DNS label"}},
		{"dotted name", Options{Name: "a.b"}, []string{`"a.b"`, "DNS label"}},
		{"long name", Options{Name: strings.Repeat("a", 64)}, []string{"at most 63"}},
		{"http endpoint", Options{Name: "k", Endpoint: "http://1.2.3.4:6443"}, []string{`"http://1.2.3.4:6443"`, "https", "HOST:PORT"}},
		{"no port", Options{Name: "k", Endpoint: "1.2.3.4"}, []string{`"1.2.3.4"`, "no port", "HOST:PORT or https://HOST:PORT"}},
		{"bad port", Options{Name: "k", Endpoint: "1.2.3.4:99999"}, []string{`"1.2.3.4:99999"`, "port"}},
		{"path", Options{Name: "k", Endpoint: "https://1.2.3.4:6443/api"}, []string{`"https://1.2.3.4:6443/api"`}},
		{"bad host", Options{Name: "k", Endpoint: "bad_host!:6443"}, []string{`"bad_host!:6443"`, "neither an IP"}},
		{"bad service CIDR", Options{Name: "k", ServiceCIDR: "10.96.0.0"}, []string{"serviceCIDR", `"10.96.0.0"`}},
		{"host bits", Options{Name: "k", ServiceCIDR: "10.96.0.1/12"}, []string{"serviceCIDR", "did you mean 10.96.0.0/12"}},
		{"overlap", Options{Name: "k", PodCIDR: "10.96.0.0/16"}, []string{"overlap"}},
		{"families", Options{Name: "k", PodCIDR: "fd00::/56"}, []string{"same IP family"}},
		{"v6 too large", Options{Name: "k", ServiceCIDR: "fd00::/48", PodCIDR: "fd01::/56"}, []string{"too large"}},
		{"too small", Options{Name: "k", ServiceCIDR: "10.96.0.0/30"}, []string{"too small"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "c")
			_, err := Generate(dir, tc.opts)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if _, serr := os.Stat(dir); serr == nil {
				t.Error("directory written despite invalid options")
			}
		})
	}
}

func TestNormalizeEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:6443":            "https://127.0.0.1:6443",
		"https://127.0.0.1:6443":    "https://127.0.0.1:6443",
		"https://127.0.0.1:6443/":   "https://127.0.0.1:6443",
		"API.Example.com:443":       "https://api.example.com:443",
		"[fd00::1]:6443":            "https://[fd00::1]:6443",
		"https://[fd00::0001]:6443": "https://[fd00::1]:6443",
	} {
		got, err := NormalizeEndpoint(in)
		if err != nil || got != want {
			t.Errorf("NormalizeEndpoint(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", ":6443", "host:", "host:0", "host:06443", "ftp://h:1", "https://u@h:1", "https://h:1?x", "fd00::1:6443", "[fe80::1%eth0]:6443"} {
		if got, err := NormalizeEndpoint(in); err == nil {
			t.Errorf("NormalizeEndpoint(%q) = %q, want an error", in, got)
		}
	}
}

func TestRefuseOverwrite(t *testing.T) {
	dir, c := generate(t, Options{Name: "first"})
	before, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	_, err := Generate(dir, Options{Name: "second"})
	if err == nil {
		t.Fatal("overwrote without Force")
	}
	want := dir + " already holds cluster first; use --force to overwrite (this invalidates every node built from it)"
	if err.Error() != want {
		t.Errorf("error %q\nwant  %q", err, want)
	}
	after, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	if !bytes.Equal(before, after) {
		t.Error("CA changed by a refused generate")
	}

	c2, err := Generate(dir, Options{Name: "second", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if c2.Name != "second" || c2.CAHash == c.CAHash || c2.BootstrapToken == c.BootstrapToken {
		t.Errorf("Force did not make a new cluster: %s %s", c2.Name, c2.CAHash)
	}
	if _, err := Load(dir); err != nil {
		t.Fatal(err)
	}
	// No temporary files left.
	entries, _ := os.ReadDir(filepath.Join(dir, "pki"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left over: %s", e.Name())
		}
	}
}

func TestModes(t *testing.T) {
	dir, _ := generate(t, Options{})
	for rel, want := range map[string]os.FileMode{
		PKIDir: 0o700, EtcdDir: 0o700, SecretsDir: 0o700,
		CAKeyFile: 0o600, EtcdCAKeyFile: 0o600, FrontProxyCAKeyFile: 0o600, ServiceAccountKeyFile: 0o600,
		EncryptionKeyFile: 0o600, BootstrapTokenFile: 0o600, AdminKubeconfigFile: 0o600,
		CACertFile: 0o644, EtcdCACertFile: 0o644, FrontProxyCACertFile: 0o644, ServiceAccountPubFile: 0o644,
		ConfigFile: 0o644,
	} {
		fi, err := os.Stat(filepath.Join(dir, rel))
		if err != nil {
			t.Error(err)
			continue
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", rel, got, want)
		}
	}
}

func TestAdminKubeconfig(t *testing.T) {
	dir, c := generate(t, Options{Endpoint: "192.168.1.10:6443"})
	data, err := os.ReadFile(filepath.Join(dir, AdminKubeconfigFile))
	if err != nil {
		t.Fatal(err)
	}
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		t.Fatal(err)
	}
	if kc.Server != "https://192.168.1.10:6443" || kc.Server != c.Endpoint {
		t.Errorf("server %q, want %q", kc.Server, c.Endpoint)
	}
	if !bytes.Equal(kc.CAPEM, c.CA.CertPEM) {
		t.Error("kubeconfig CA is not the cluster CA")
	}
	cert, err := pki.ParseCertPEM(kc.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.ParseKeyPEM(kc.KeyPEM)
	if err != nil || !pki.KeyMatches(cert, key) {
		t.Fatalf("client key: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.CA.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("admin certificate does not verify against the CA: %v", err)
	}
	if cert.Subject.CommonName != "kubernetes-admin" || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "system:masters" {
		t.Errorf("subject %v", cert.Subject)
	}
}

func TestLoadForWorker(t *testing.T) {
	dir, c := generate(t, Options{})
	worker := t.TempDir()
	for _, rel := range []string{ConfigFile, CACertFile, BootstrapTokenFile} {
		data, _ := os.ReadFile(filepath.Join(dir, rel))
		if err := pki.WriteFile(filepath.Join(worker, rel), data, false); err != nil {
			t.Fatal(err)
		}
	}
	w, err := LoadForWorker(worker)
	if err != nil {
		t.Fatal(err)
	}
	if w.CA.Key != nil || w.EtcdCA != nil || w.ServiceAccountKey != nil || w.EncryptionKey != nil {
		t.Error("worker has master secrets")
	}
	if w.CAHash != c.CAHash || w.BootstrapToken != c.BootstrapToken || !w.CA.Cert.Equal(c.CA.Cert) {
		t.Error("worker material differs")
	}
	if _, err := Load(worker); err == nil || !strings.Contains(err.Error(), "pki/ca.key: no such file") {
		t.Errorf("Load of worker material: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	template, _ := generate(t, Options{})
	other, _ := generate(t, Options{Name: "other"})
	read := func(dir, rel string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	yamlWith := func(from, to string) func(string) {
		return func(dir string) {
			p := filepath.Join(dir, ConfigFile)
			data := read(dir, ConfigFile)
			if !bytes.Contains(data, []byte(from)) {
				t.Fatalf("cluster.yaml lacks %q", from)
			}
			os.WriteFile(p, bytes.Replace(data, []byte(from), []byte(to), 1), 0o644)
		}
	}
	write := func(rel, content string) func(string) {
		return func(dir string) { os.WriteFile(filepath.Join(dir, rel), []byte(content), 0o600) }
	}
	remove := func(rel string) func(string) {
		return func(dir string) { os.Remove(filepath.Join(dir, rel)) }
	}
	copyFrom := func(src, rel string) func(string) {
		return func(dir string) { os.WriteFile(filepath.Join(dir, rel), read(src, rel), 0o600) }
	}
	replaceWith := func(fromRel, toRel string) func(string) {
		return func(dir string) { os.WriteFile(filepath.Join(dir, toRel), read(dir, fromRel), 0o644) }
	}
	zero := func(rel string) func(string) {
		return func(dir string) {
			os.Remove(filepath.Join(dir, rel))
			if err := os.Symlink("/dev/zero", filepath.Join(dir, rel)); err != nil {
				t.Fatal(err)
			}
		}
	}
	restore := "restore it from a backup"
	for _, tc := range []struct {
		name   string
		break_ func(dir string)
		want   []string // the first names the file
	}{
		{"no cluster.yaml", remove(ConfigFile), []string{"cluster.yaml: no such file", `generate a cluster with "kiln gen cluster --out `}},
		{"cluster.yaml not yaml", write(ConfigFile, "name: [\n"), []string{"cluster.yaml: ", restore}},
		{"cluster.yaml unknown field", yamlWith("kind:", "extra: 1\nkind:"), []string{"cluster.yaml: ", `unknown field "extra"`}},
		{"cluster.yaml duplicate field", yamlWith("kind:", "name: x\nkind:"), []string{"cluster.yaml: "}},
		{"cluster.yaml wrong kind", yamlWith(`kind: "Cluster"`, `kind: "NodeConfig"`), []string{"cluster.yaml: ", `kind "NodeConfig"`}},
		{"cluster.yaml bad name", yamlWith(`name: "test"`, `name: "Test"`), []string{"cluster.yaml: ", `cluster name "Test"`}},
		{"cluster.yaml bad endpoint", yamlWith(`endpoint: "https://127.0.0.1:6443"`, `endpoint: "127.0.0.1"`), []string{"cluster.yaml: ", `endpoint "127.0.0.1"`}},
		{"cluster.yaml endpoint not normal", yamlWith(`endpoint: "https://127.0.0.1:6443"`, `endpoint: "127.0.0.1:6443"`), []string{"cluster.yaml: ", `endpoint "127.0.0.1:6443"`}},
		{"cluster.yaml dns outside", yamlWith(`clusterDNS: "10.96.0.10"`, `clusterDNS: "10.244.0.10"`), []string{"cluster.yaml: ", "clusterDNS"}},
		{"cluster.yaml missing field", yamlWith(`clusterDomain: "cluster.local"`, ``), []string{"cluster.yaml: ", "clusterDomain"}},
		{"cluster.yaml bad created", yamlWith(`created: "`, `created: "yesterday`), []string{"cluster.yaml: ", "created"}},
		{"cluster.yaml other CA hash", copyFrom(other, ConfigFile), []string{"cluster.yaml: caHash", "does not match pki/ca.crt"}},
		{"cluster.yaml on /dev/zero", zero(ConfigFile), []string{"cluster.yaml: larger than 4 MiB, the most kiln reads from such a file"}},
		{"cluster.yaml two documents", yamlWith(`kind: "Cluster"`, "kind: \"Cluster\"\n---\nname: other"), []string{"cluster.yaml: a second YAML document at line ", "one document per file"}},
		{"cluster.yaml huge name", yamlWith(`name: "test"`, `name: "`+strings.Repeat("x", 1<<20)+`"`), []string{"cluster.yaml: ", `cluster name "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"… (1048576 bytes)`}},
		{"ca.key on /dev/zero", zero(CAKeyFile), []string{"pki/ca.key: larger than 1 MiB, the most kiln reads from such a file"}},
		{"bootstrap-token on /dev/zero", zero(BootstrapTokenFile), []string{"secrets/bootstrap-token: larger than 1 MiB"}},
		{"ca.crt missing", remove(CACertFile), []string{"pki/ca.crt: no such file", restore, "--force --out"}},
		{"ca.crt garbage", write(CACertFile, "not a certificate\n"), []string{"pki/ca.crt: not a PEM certificate"}},
		{"ca.crt is the etcd CA", replaceWith(EtcdCACertFile, CACertFile), []string{"pki/ca.key: key does not match certificate"}},
		{"ca.key missing", remove(CAKeyFile), []string{"pki/ca.key: no such file"}},
		{"ca.key garbage", write(CAKeyFile, "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"), []string{"pki/ca.key: invalid EC PRIVATE KEY"}},
		{"ca.key of another cluster", copyFrom(other, CAKeyFile), []string{"pki/ca.key: key does not match certificate"}},
		{"etcd ca.crt garbage", write(EtcdCACertFile, ""), []string{"pki/etcd/ca.crt: not a PEM certificate"}},
		{"etcd ca.key missing", remove(EtcdCAKeyFile), []string{"pki/etcd/ca.key: no such file"}},
		{"front-proxy ca.crt missing", remove(FrontProxyCACertFile), []string{"pki/front-proxy-ca.crt: no such file"}},
		{"front-proxy ca.key garbage", write(FrontProxyCAKeyFile, "x"), []string{"pki/front-proxy-ca.key: not a PEM private key"}},
		{"sa.key missing", remove(ServiceAccountKeyFile), []string{"pki/sa.key: no such file"}},
		{"sa.key garbage", write(ServiceAccountKeyFile, "x"), []string{"pki/sa.key: not a PEM private key"}},
		{"sa.pub missing", remove(ServiceAccountPubFile), []string{"pki/sa.pub: no such file"}},
		{"sa.pub garbage", write(ServiceAccountPubFile, "x"), []string{"pki/sa.pub: not a PEM public key"}},
		{"sa.pub of another cluster", copyFrom(other, ServiceAccountPubFile), []string{"pki/sa.pub: not the public half of pki/sa.key"}},
		{"encryption.key missing", remove(EncryptionKeyFile), []string{"secrets/encryption.key: no such file"}},
		{"encryption.key short", write(EncryptionKeyFile, base64.StdEncoding.EncodeToString([]byte("1234567"))+"\n"), []string{"secrets/encryption.key: want 32 bytes base64, got 7"}},
		{"encryption.key not base64", write(EncryptionKeyFile, "!!!"), []string{"secrets/encryption.key: want 32 bytes base64, got text that is not base64"}},
		{"bootstrap-token missing", remove(BootstrapTokenFile), []string{"secrets/bootstrap-token: no such file"}},
		{"bootstrap-token bad", write(BootstrapTokenFile, "ABCDEF.0123456789abcdef\n"), []string{"secrets/bootstrap-token: want one line"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "c")
			copyDir(t, template, dir)
			tc.break_(dir)
			_, err := Load(dir)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if len(msg) > 2000 {
				t.Errorf("error of %d bytes: %.300s…", len(msg), msg)
			}
			t.Logf("%.500s", msg)
			prefix := "cluster directory " + dir + ": "
			if !strings.HasPrefix(msg, prefix) {
				t.Errorf("error %q does not start with %q", msg, prefix)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			if strings.Count(msg, "\n") != 0 {
				t.Errorf("multi-line error %q", msg)
			}
		})
	}
}

func TestLoadDirErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := Load(missing)
	want := "cluster directory " + missing + " does not exist (create one with: kiln gen cluster --name NAME --out " + missing + ")"
	if err == nil || err.Error() != want {
		t.Errorf("error %v\nwant  %s", err, want)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := Load(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file as directory: %v", err)
	}
	if _, err := Load(""); err == nil {
		t.Error("empty dir: no error")
	}
	empty := t.TempDir()
	if _, err := Load(empty); err == nil || !strings.Contains(err.Error(), "cluster.yaml: no such file") {
		t.Errorf("empty dir: %v", err)
	}
}

// copyDir copies a cluster directory (files and modes).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(target, info.Mode().Perm())
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}
