package pki

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestIssueShortLivedAndRenewAt(t *testing.T) {
	ca, err := NewCA("test-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(CertRequest{CommonName: "short", Client: true, Validity: 3 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	// Backdated by a tenth of its lifetime only, not 5 minutes: most of
	// it is ahead, and its renewal two minutes or so from now.
	if back := time.Since(cert.NotBefore); back > 20*time.Second {
		t.Errorf("NotBefore %s ago, want at most 18s", back)
	}
	renew := RenewAt(cert)
	if d := time.Until(renew); d < 100*time.Second || d > 2*time.Minute {
		t.Errorf("renewal in %s, want about 2m minus a little", d)
	}
	if want := cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) * 2 / 3); renew.Sub(want).Abs() > time.Millisecond {
		t.Errorf("RenewAt %s, want %s", renew, want)
	}

	// A renewal for the same key: a new certificate, the same key.
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	again, key2PEM, err := ca.Issue(CertRequest{CommonName: "short", Client: true, Validity: time.Hour, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := ParseCertPEM(again)
	if !KeyMatches(c2, key) || string(key2PEM) != string(keyPEM) {
		t.Error("a renewal with Key set did not certify that key")
	}
	if c2.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Error("the renewal has the same serial")
	}
	// A long-lived certificate keeps the 5 minutes of backdating.
	long, _, err := ca.Issue(CertRequest{CommonName: "long", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	lc, _ := ParseCertPEM(long)
	if back := time.Since(lc.NotBefore); back < 4*time.Minute {
		t.Errorf("a year's certificate backdated %s, want 5m", back)
	}
}

func TestKubeconfigWithFiles(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(CertRequest{CommonName: "user", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	pair := filepath.Join(dir, "user.pem")
	if err := WriteFile(pair, append(certPEM, keyPEM...), true); err != nil {
		t.Fatal(err)
	}
	kc := Kubeconfig{ClusterName: "c", Server: "https://10.0.0.1:6443", UserName: "user", CAPEM: ca.CertPEM, CertFile: pair, KeyFile: pair}
	data, err := kc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseKubeconfig(data)
	if err != nil {
		t.Fatal(err)
	}
	if back.CertFile != pair || back.KeyFile != pair || len(back.CertPEM) != 0 {
		t.Fatalf("read back %+v", back)
	}
	cert, err := back.ClientCertificate()
	if err != nil || len(cert.Certificate) != 1 {
		t.Fatalf("ClientCertificate: %v", err)
	}
	// Both forms at once, or a file without its key, are refused.
	both := kc
	both.CertPEM, both.KeyPEM = certPEM, keyPEM
	if _, err := both.Marshal(); err == nil {
		t.Error("embedded and file certificate both accepted")
	}
	half := kc
	half.KeyFile = ""
	if _, err := half.Marshal(); err == nil {
		t.Error("a certificate file without its key accepted")
	}
}

func TestWriteRotatedPair(t *testing.T) {
	dir := t.TempDir()
	cur, err := WriteRotatedPair(dir, "kubelet-client", []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(cur) != "kubelet-client-current.pem" {
		t.Errorf("current pair %s", cur)
	}
	fi, err := os.Lstat(cur)
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("current pair is not a symlink: %v %v", fi, err)
	}
	target, _ := os.Readlink(cur)
	if !filepath.IsAbs(target) {
		t.Errorf("symlink target %s is not absolute", target)
	}
	if st, _ := os.Stat(target); st.Mode().Perm() != 0o600 {
		t.Errorf("pair mode %v, want 0600", st.Mode().Perm())
	}
	time.Sleep(1100 * time.Millisecond) // a new file name
	if _, err := WriteRotatedPair(dir, "kubelet-client", []byte("second")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(cur); string(b) != "second" {
		t.Errorf("current pair reads %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*tmp*")); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
