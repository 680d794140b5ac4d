package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func newTestCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA("test-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestNewCA(t *testing.T) {
	ca := newTestCA(t)
	if !ca.Cert.IsCA || ca.Cert.Subject.CommonName != "test-ca" {
		t.Fatalf("CA cert: IsCA=%v CN=%q", ca.Cert.IsCA, ca.Cert.Subject.CommonName)
	}
	if ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("CA cert lacks KeyUsageCertSign")
	}
	if _, ok := ca.Key.(*ecdsa.PrivateKey); !ok {
		t.Errorf("CA key is %T, want ECDSA", ca.Key)
	}
	if d := time.Until(ca.Cert.NotAfter); d < 9*365*24*time.Hour {
		t.Errorf("CA valid for %v, want ~10 years", d)
	}
	parsed, err := ParseCertPEM(ca.CertPEM)
	if err != nil || !parsed.Equal(ca.Cert) {
		t.Fatalf("CertPEM does not round-trip: %v", err)
	}
	if !KeyMatches(ca.Cert, ca.Key) {
		t.Error("key does not match")
	}
	if _, err := NewCA("", 0); err == nil {
		t.Error("NewCA with empty CN: no error")
	}
}

func TestIssueServerCert(t *testing.T) {
	ca := newTestCA(t)
	certPEM, keyPEM, err := ca.Issue(CertRequest{
		CommonName: "kube-apiserver",
		DNSNames:   []string{"kubernetes", "localhost"},
		IPs:        []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
		Server:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !KeyMatches(cert, key) {
		t.Fatal("issued key does not match issued certificate")
	}
	if block, _ := pem.Decode(keyPEM); block.Type != "EC PRIVATE KEY" {
		t.Errorf("key PEM type %q", block.Type)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, name := range []string{"kubernetes", "localhost", "127.0.0.1", "10.96.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{
			DNSName: name, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}); err != nil {
			t.Errorf("verify as server %s: %v", name, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: roots}); err == nil {
		t.Error("verified for a name not in the SANs")
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err == nil {
		t.Error("a server-only certificate verified for client auth")
	}
	if cert.IsCA {
		t.Error("leaf certificate is a CA")
	}
	if d := time.Until(cert.NotAfter); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("default validity %v, want 1 year", d)
	}
	// A certificate from another CA does not verify.
	other := newTestCA(t)
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(other.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "kubernetes", Roots: otherRoots}); err == nil {
		t.Error("verified against the wrong CA")
	}
}

func TestIssueClientCert(t *testing.T) {
	ca := newTestCA(t)
	certPEM, _, err := ca.Issue(CertRequest{
		CommonName: "kubernetes-admin", Organization: []string{"system:masters"}, Client: true,
		Validity: 100 * 365 * 24 * time.Hour, // longer than the CA: capped
	})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := ParseCertPEM(certPEM)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Fatal(err)
	}
	if got := cert.Subject.Organization; len(got) != 1 || got[0] != "system:masters" {
		t.Errorf("O = %v", got)
	}
	if cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Errorf("certificate outlives its CA: %v > %v", cert.NotAfter, ca.Cert.NotAfter)
	}
}

func TestIssueErrors(t *testing.T) {
	ca := newTestCA(t)
	if _, _, err := ca.Issue(CertRequest{CommonName: "x"}); err == nil {
		t.Error("no usage: no error")
	}
	if _, _, err := ca.Issue(CertRequest{Server: true}); err == nil {
		t.Error("no CN: no error")
	}
	noKey := &CA{Cert: ca.Cert, CertPEM: ca.CertPEM}
	if _, _, err := noKey.Issue(CertRequest{CommonName: "x", Client: true}); err == nil {
		t.Error("CA without key: no error")
	}
}

func writeCA(t *testing.T, dir string, ca *CA) (certPath, keyPath string) {
	t.Helper()
	certPath, keyPath = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	keyPEM, err := KeyPEM(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(certPath, ca.CertPEM, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(keyPath, keyPEM, true); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func TestLoadCA(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	certPath, keyPath := writeCA(t, dir, ca)
	got, err := LoadCA(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(ca.Cert) || !KeyMatches(got.Cert, got.Key) || string(got.CertPEM) != string(ca.CertPEM) {
		t.Fatal("loaded CA differs")
	}
	cert, certPEM, err := LoadCACert(certPath)
	if err != nil || !cert.Equal(ca.Cert) || string(certPEM) != string(ca.CertPEM) {
		t.Fatalf("LoadCACert: %v", err)
	}

	otherDir := t.TempDir()
	_, otherKey := writeCA(t, otherDir, newTestCA(t))
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("hello\n"), 0o600)
	leafPath := filepath.Join(dir, "leaf.crt")
	leafPEM, leafKeyPEM, _ := ca.Issue(CertRequest{CommonName: "leaf", Server: true})
	os.WriteFile(leafPath, leafPEM, 0o644)
	leafKey := filepath.Join(dir, "leaf.key")
	os.WriteFile(leafKey, leafKeyPEM, 0o600)
	expiredCert, expiredKey := writeExpiredCA(t, t.TempDir())
	missing := filepath.Join(dir, "missing")

	for _, tc := range []struct {
		name, cert, key string
		wantFile        string
		want            string
	}{
		{"missing cert", missing, keyPath, missing, "no such file"},
		{"missing key", certPath, missing, missing, "no such file"},
		{"garbage cert", garbage, keyPath, garbage, "not a PEM certificate"},
		{"key as cert", keyPath, keyPath, keyPath, "not a PEM certificate"},
		{"garbage key", certPath, garbage, garbage, "not a PEM private key"},
		{"mismatched key", certPath, otherKey, otherKey, "key does not match certificate " + certPath},
		{"not a CA", leafPath, leafKey, leafPath, "not a CA certificate"},
		{"expired", expiredCert, expiredKey, expiredCert, "expired on "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadCA(tc.cert, tc.key)
			if err == nil {
				t.Fatal("no error")
			}
			var fe *FileError
			if !errors.As(err, &fe) || fe.Path != tc.wantFile {
				t.Fatalf("error %q does not name %s", err, tc.wantFile)
			}
			if !strings.HasPrefix(err.Error(), tc.wantFile+": ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want %q", err, tc.wantFile+": ..."+tc.want)
			}
			if tc.want == "no such file" && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("missing file error is not fs.ErrNotExist")
			}
		})
	}
}

// writeExpiredCA writes a CA certificate that expired yesterday.
func writeExpiredCA(t *testing.T, dir string) (string, string) {
	t.Helper()
	ca := newTestCA(t)
	tmpl := *ca.Cert
	tmpl.NotBefore = time.Now().Add(-48 * time.Hour)
	tmpl.NotAfter = time.Now().Add(-24 * time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, ca.Key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	ca.CertPEM = encodeCert(der)
	return writeCA(t, dir, ca)
}

func TestKeyPEMRoundTrip(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"rsa": rsaKey, "ecdsa": ecKey} {
		keyPEM, err := KeyPEM(key)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		back, err := ParseKeyPEM(keyPEM)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !PublicKeysEqual(back.Public(), key.Public()) {
			t.Errorf("%s: key does not round-trip", name)
		}
		pubPEM, err := PublicKeyPEM(key)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if block, _ := pem.Decode(pubPEM); block == nil || block.Type != "PUBLIC KEY" {
			t.Fatalf("%s: public key PEM %q", name, pubPEM)
		}
		pub, err := ParsePublicKeyPEM(pubPEM)
		if err != nil || !PublicKeysEqual(pub, key.Public()) {
			t.Errorf("%s: public key does not round-trip: %v", name, err)
		}
	}
	// PKCS #8 is read too.
	der, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	if k, err := ParseKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil ||
		!PublicKeysEqual(k.Public(), ecKey.Public()) {
		t.Errorf("PKCS #8: %v", err)
	}
	if _, err := ParseKeyPEM([]byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")); err == nil ||
		!strings.Contains(err.Error(), "invalid EC PRIVATE KEY") {
		t.Errorf("corrupt key: %v", err)
	}
}

func TestCAHash(t *testing.T) {
	ca := newTestCA(t)
	// By hand: the SubjectPublicKeyInfo is the certificate's public key
	// marshalled as PKIX DER.
	spki, err := x509.MarshalPKIXPublicKey(ca.Key.Public())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(spki)
	want := "sha256:" + hex.EncodeToString(sum[:])
	if got := CAHash(ca.Cert); got != want {
		t.Fatalf("CAHash = %s, want %s", got, want)
	}
	if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(want) {
		t.Fatalf("hash format %q", want)
	}
	if CAHash(newTestCA(t).Cert) == want {
		t.Fatal("two CAs, one hash")
	}
}

func TestBootstrapToken(t *testing.T) {
	idRe, secretRe := regexp.MustCompile(`^[a-z0-9]{6}$`), regexp.MustCompile(`^[a-z0-9]{16}$`)
	seen := map[string]bool{}
	for range 200 {
		id, secret, err := NewBootstrapToken()
		if err != nil {
			t.Fatal(err)
		}
		if !idRe.MatchString(id) || !secretRe.MatchString(secret) {
			t.Fatalf("token %q.%q does not match [a-z0-9]{6}.[a-z0-9]{16}", id, secret)
		}
		if seen[id+secret] {
			t.Fatalf("token %s.%s repeated", id, secret)
		}
		seen[id+secret] = true
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "s", "deep", "secret.key")
	public := filepath.Join(dir, "p", "public.crt")
	if err := WriteFile(secret, []byte("s1"), true); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(public, []byte("p1"), false); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{
		secret: 0o600, filepath.Dir(secret): 0o700, filepath.Join(dir, "s"): 0o700,
		public: 0o644, filepath.Dir(public): 0o755,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", path, got, want)
		}
	}
	// Overwrite: content replaced, mode enforced, no temporary files left.
	os.Chmod(secret, 0o644)
	if err := WriteFile(secret, []byte("s2"), true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(secret); string(b) != "s2" {
		t.Errorf("content %q after overwrite", b)
	}
	if fi, _ := os.Stat(secret); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o after overwrite, want 600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(secret))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want 1 (temporary file left?)", len(entries))
	}
	// A parent that is a file: error, nothing written.
	if err := WriteFile(filepath.Join(public, "x"), []byte("x"), false); err == nil {
		t.Error("writing under a file: no error")
	}
}

func TestKubeconfig(t *testing.T) {
	ca := newTestCA(t)
	certPEM, keyPEM, err := ca.Issue(CertRequest{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	kc := Kubeconfig{
		ClusterName: "kiln", Server: "https://127.0.0.1:6443", UserName: "kubernetes-admin",
		CAPEM: ca.CertPEM, CertPEM: certPEM, KeyPEM: keyPEM,
	}
	data, err := kc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	get := func(path ...any) any {
		var v any = m
		for _, p := range path {
			switch p := p.(type) {
			case string:
				v = v.(map[string]any)[p]
			case int:
				v = v.([]any)[p]
			}
		}
		return v
	}
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	for _, c := range []struct {
		path []any
		want any
	}{
		{[]any{"apiVersion"}, "v1"},
		{[]any{"kind"}, "Config"},
		{[]any{"current-context"}, "kubernetes-admin@kiln"},
		{[]any{"clusters", 0, "name"}, "kiln"},
		{[]any{"clusters", 0, "cluster", "server"}, "https://127.0.0.1:6443"},
		{[]any{"clusters", 0, "cluster", "certificate-authority-data"}, b64(ca.CertPEM)},
		{[]any{"users", 0, "name"}, "kubernetes-admin"},
		{[]any{"users", 0, "user", "client-certificate-data"}, b64(certPEM)},
		{[]any{"users", 0, "user", "client-key-data"}, b64(keyPEM)},
		{[]any{"contexts", 0, "name"}, "kubernetes-admin@kiln"},
		{[]any{"contexts", 0, "context", "cluster"}, "kiln"},
		{[]any{"contexts", 0, "context", "user"}, "kubernetes-admin"},
	} {
		if got := get(c.path...); got != c.want {
			t.Errorf("%v = %v, want %v", c.path, got, c.want)
		}
	}
	for _, list := range []string{"clusters", "users", "contexts"} {
		if n := len(m[list].([]any)); n != 1 {
			t.Errorf("%d %s, want 1", n, list)
		}
	}
	if _, ok := get("users", 0, "user").(map[string]any)["token"]; ok {
		t.Error("empty token written")
	}
	back, err := ParseKubeconfig(data)
	if err != nil {
		t.Fatal(err)
	}
	if back.Server != kc.Server || string(back.CertPEM) != string(certPEM) || string(back.KeyPEM) != string(keyPEM) ||
		string(back.CAPEM) != string(ca.CertPEM) || back.ClusterName != kc.ClusterName || back.UserName != kc.UserName {
		t.Errorf("ParseKubeconfig: %+v", back)
	}

	// A token-only kubeconfig.
	tok := Kubeconfig{ClusterName: "kiln", Server: "https://[::1]:6443", UserName: "bootstrap", CAPEM: ca.CertPEM, Token: "abcdef.0123456789abcdef"}
	data, err = tok.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if back, err := ParseKubeconfig(data); err != nil || back.Token != tok.Token || back.CertPEM != nil {
		t.Errorf("token kubeconfig: %+v %v", back, err)
	}

	for name, bad := range map[string]Kubeconfig{
		"no server":      {ClusterName: "k", UserName: "u", CAPEM: ca.CertPEM, Token: "t"},
		"http server":    {ClusterName: "k", UserName: "u", Server: "http://x:1", CAPEM: ca.CertPEM, Token: "t"},
		"no CA":          {ClusterName: "k", UserName: "u", Server: "https://x:1", Token: "t"},
		"no credentials": {ClusterName: "k", UserName: "u", Server: "https://x:1", CAPEM: ca.CertPEM},
		"cert, no key":   {ClusterName: "k", UserName: "u", Server: "https://x:1", CAPEM: ca.CertPEM, CertPEM: certPEM},
		"no names":       {Server: "https://x:1", CAPEM: ca.CertPEM, Token: "t"},
	} {
		if _, err := bad.Marshal(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// Key and certificate files are read up to a cap: one that never ends (a
// symlink to /dev/zero) is an error naming the file and the cap, not a
// process that grows until the machine is out of memory.
func TestReadFileCapped(t *testing.T) {
	dir := t.TempDir()
	zero := filepath.Join(dir, "ca.key")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	_, err := ReadFile(zero)
	var fe *FileError
	if !errors.As(err, &fe) || fe.Path != zero || err.Error() != zero+": larger than 1 MiB, the most kiln reads from such a file" {
		t.Errorf("ReadFile(/dev/zero): %v", err)
	}
	ca, err := NewCA("kiln-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPath := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(certPath, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(certPath, zero); err == nil || !strings.Contains(err.Error(), zero+": larger than 1 MiB") {
		t.Errorf("LoadCA with a key on /dev/zero: %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFileMax(big, 4<<20); err != nil {
		t.Errorf("2 MiB under a 4 MiB cap: %v", err)
	}
	if _, err := ReadFile(big); err == nil || !strings.Contains(err.Error(), "larger than 1 MiB") {
		t.Errorf("2 MiB key file: %v", err)
	}
}
