package pki

import "testing"

// The parsers of files a user hands kiln never panic.
func FuzzParsers(f *testing.F) {
	ca, err := NewCA("fuzz", 0)
	if err != nil {
		f.Fatal(err)
	}
	_, keyPEM, _ := ca.Issue(CertRequest{CommonName: "x", Client: true})
	f.Add(ca.CertPEM)
	f.Add(keyPEM)
	f.Add([]byte("apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster: {server: https://x}\nusers:\n- name: u\n  user: {client-certificate-data: eA==}\n"))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = ParseCertPEM(data)
		_, _ = ParseKeyPEM(data)
		_, _ = ParsePublicKeyPEM(data)
		if kc, err := ParseKubeconfig(data); err == nil {
			_, _ = kc.ClientCertificate()
			_, _ = kc.TLSConfig()
		}
		_, _ = RewriteKubeconfigServer(data, "https://10.0.0.1:6443")
	})
}
