package cluster

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/yaml"

	"kiln/internal/bounded"
	"kiln/pki"
)

// Options are the choices "kiln gen cluster" offers. Empty fields take the
// defaults (Name is required).
type Options struct {
	Name string
	// Endpoint is where nodes and clients reach the API server: HOST:PORT
	// or https://HOST:PORT. Default DefaultEndpoint.
	Endpoint string
	// Force overwrites a cluster already in the directory.
	Force bool
	// ServiceCIDR and PodCIDR override DefaultServiceCIDR and
	// DefaultPodCIDR. The cluster DNS address is the service range's 10th.
	ServiceCIDR, PodCIDR string
}

// Generate writes a new cluster directory in dir and returns it, loaded
// back (so it is exactly what Load will read). It refuses to overwrite an
// existing cluster unless opts.Force: every node built from a cluster
// trusts its CAs. Options are validated before anything is written.
func Generate(dir string, opts Options) (*Cluster, error) {
	if dir == "" {
		return nil, errors.New("no cluster directory given")
	}
	f, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	p := PathsFor(dir)
	if fileExists(p.Config) {
		if !opts.Force {
			return nil, fmt.Errorf("%s already holds cluster %s; use --force to overwrite (this invalidates every node built from it)",
				dir, existingName(p.Config))
		}
		// Remove it first: an overwrite cut short leaves a directory
		// that Load calls incomplete, not a mix of two clusters.
		if err := os.Remove(p.Config); err != nil {
			return nil, err
		}
	}

	ca, err := pki.NewCA(CAName, caValidity)
	if err != nil {
		return nil, err
	}
	etcdCA, err := pki.NewCA(EtcdCAName, caValidity)
	if err != nil {
		return nil, err
	}
	fpCA, err := pki.NewCA(FrontProxyCAName, caValidity)
	if err != nil {
		return nil, err
	}
	// ECDSA P-256: kube-apiserver signs service-account tokens with it
	// (ES256) and verifies them with the public half; both flags take
	// ECDSA or RSA keys.
	saKey, saKeyPEM, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	saPubPEM, err := pki.PublicKeyPEM(saKey)
	if err != nil {
		return nil, err
	}
	encKey := make([]byte, EncryptionKeySize)
	if _, err := rand.Read(encKey); err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	tokenID, tokenSecret, err := pki.NewBootstrapToken()
	if err != nil {
		return nil, err
	}
	adminCert, adminKey, err := ca.Issue(pki.CertRequest{
		CommonName:   AdminUser,
		Organization: []string{AdminGroup},
		Client:       true,
		Validity:     adminValidity,
	})
	if err != nil {
		return nil, fmt.Errorf("admin certificate: %w", err)
	}
	admin, err := pki.Kubeconfig{
		ClusterName: f.Name,
		Server:      f.Endpoint,
		UserName:    AdminUser,
		CAPEM:       ca.CertPEM,
		CertPEM:     adminCert,
		KeyPEM:      adminKey,
	}.Marshal()
	if err != nil {
		return nil, err
	}
	f.CAHash = pki.CAHash(ca.Cert)
	f.Created = time.Now().UTC().Format(time.RFC3339)
	if err := f.validate(); err != nil {
		return nil, fmt.Errorf("internal error: generated cluster.yaml is invalid: %w", err)
	}

	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return nil, err
	}
	// The key directories are private whoever made them.
	for _, d := range []string{PKIDir, EtcdDir, SecretsDir} {
		path := filepath.Join(p.Dir, filepath.FromSlash(d))
		if err := os.MkdirAll(path, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chmod(path, 0o700); err != nil {
			return nil, err
		}
	}
	caKey, err := pki.KeyPEM(ca.Key)
	if err != nil {
		return nil, err
	}
	etcdKey, err := pki.KeyPEM(etcdCA.Key)
	if err != nil {
		return nil, err
	}
	fpKey, err := pki.KeyPEM(fpCA.Key)
	if err != nil {
		return nil, err
	}
	for _, w := range []struct {
		path   string
		data   []byte
		secret bool
	}{
		{p.CACert, ca.CertPEM, false},
		{p.CAKey, caKey, true},
		{p.EtcdCACert, etcdCA.CertPEM, false},
		{p.EtcdCAKey, etcdKey, true},
		{p.FrontProxyCACert, fpCA.CertPEM, false},
		{p.FrontProxyCAKey, fpKey, true},
		{p.ServiceAccountKey, saKeyPEM, true},
		{p.ServiceAccountPub, saPubPEM, false},
		{p.EncryptionKey, []byte(base64.StdEncoding.EncodeToString(encKey) + "\n"), true},
		{p.BootstrapToken, []byte(tokenID + "." + tokenSecret + "\n"), true},
		{p.AdminKubeconfig, admin, true},
		// Last: a directory is a cluster only once everything is in it.
		{p.Config, f.marshal(), false},
	} {
		if err := pki.WriteFile(w.path, w.data, w.secret); err != nil {
			return nil, err
		}
	}
	return Load(dir)
}

// newConfig validates opts and fills in the defaults.
func newConfig(opts Options) (*configFile, error) {
	if err := ValidateName(opts.Name); err != nil {
		return nil, err
	}
	ep := opts.Endpoint
	if ep == "" {
		ep = DefaultEndpoint
	}
	ep, err := NormalizeEndpoint(ep)
	if err != nil {
		return nil, err
	}
	svcCIDR, podCIDR := opts.ServiceCIDR, opts.PodCIDR
	if svcCIDR == "" {
		svcCIDR = DefaultServiceCIDR
	}
	if podCIDR == "" {
		podCIDR = DefaultPodCIDR
	}
	svc, pods, err := parseCIDRs(svcCIDR, podCIDR)
	if err != nil {
		return nil, err
	}
	return &configFile{
		APIVersion:    APIVersion,
		Kind:          Kind,
		Name:          opts.Name,
		Endpoint:      ep,
		ServiceCIDR:   svc.String(),
		PodCIDR:       pods.String(),
		ClusterDNS:    nthAddr(svc, 10).String(),
		ClusterDomain: DefaultClusterDomain,
	}, nil
}

// existingName is the name in an existing cluster.yaml, for messages.
func existingName(path string) string {
	data, err := bounded.ReadFile(path, bounded.MaxConfigFile)
	if err != nil {
		return "(unreadable " + ConfigFile + ")"
	}
	var f configFile
	if err := yaml.Unmarshal(data, &f); err != nil || f.Name == "" {
		return "(unreadable " + ConfigFile + ")"
	}
	if ValidateName(f.Name) != nil {
		return bounded.Quote(f.Name)
	}
	return f.Name
}
