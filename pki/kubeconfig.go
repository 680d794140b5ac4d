package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"

	"sigs.k8s.io/yaml"
)

// Kubeconfig is a kubeconfig with one cluster, one user and one context,
// the current one. The user authenticates with a client certificate
// (CertPEM and KeyPEM), a bearer token, or both.
type Kubeconfig struct {
	ClusterName string
	Server      string // https://HOST:PORT
	UserName    string
	CAPEM       []byte // the cluster CA certificate
	CertPEM     []byte
	KeyPEM      []byte
	// CertFile and KeyFile, instead of CertPEM and KeyPEM, name the
	// client certificate's files (absolute paths; the same file may hold
	// both). A client that reads its kubeconfig with client-go loads them
	// again at every TLS handshake: a certificate renewed in place is
	// used without a restart, which embedded data never is.
	CertFile string
	KeyFile  string
	Token    string
}

// ContextName is the name of the kubeconfig's only context, "USER@CLUSTER"
// as kubeadm names it.
func (k Kubeconfig) ContextName() string { return k.UserName + "@" + k.ClusterName }

// The kubeconfig schema (k8s.io/client-go/tools/clientcmd/api/v1), the part
// kiln writes. []byte fields are base64 encoded by encoding/json, which is
// exactly the "-data" fields' encoding.
type kcFile struct {
	APIVersion     string      `json:"apiVersion"`
	Kind           string      `json:"kind"`
	Clusters       []kcCluster `json:"clusters"`
	Users          []kcUser    `json:"users"`
	Contexts       []kcContext `json:"contexts"`
	CurrentContext string      `json:"current-context"`
	Preferences    struct{}    `json:"preferences"`
}

type kcCluster struct {
	Name    string `json:"name"`
	Cluster struct {
		Server                   string `json:"server"`
		CertificateAuthorityData []byte `json:"certificate-authority-data,omitempty"`
	} `json:"cluster"`
}

type kcUser struct {
	Name string `json:"name"`
	User struct {
		ClientCertificateData []byte `json:"client-certificate-data,omitempty"`
		ClientKeyData         []byte `json:"client-key-data,omitempty"`
		ClientCertificate     string `json:"client-certificate,omitempty"`
		ClientKey             string `json:"client-key,omitempty"`
		Token                 string `json:"token,omitempty"`
	} `json:"user"`
}

type kcContext struct {
	Name    string `json:"name"`
	Context struct {
		Cluster string `json:"cluster"`
		User    string `json:"user"`
	} `json:"context"`
}

// Marshal returns the kubeconfig as YAML, certificates and keys embedded.
func (k Kubeconfig) Marshal() ([]byte, error) {
	if k.ClusterName == "" || k.UserName == "" {
		return nil, errors.New("kubeconfig: cluster name and user name are required")
	}
	u, err := url.Parse(k.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("kubeconfig: server %q: want https://HOST:PORT", k.Server)
	}
	if len(k.CAPEM) == 0 {
		return nil, errors.New("kubeconfig: no CA certificate")
	}
	if (len(k.CertPEM) == 0) != (len(k.KeyPEM) == 0) {
		return nil, errors.New("kubeconfig: a client certificate needs its key and a key its certificate")
	}
	if (k.CertFile == "") != (k.KeyFile == "") {
		return nil, errors.New("kubeconfig: a client certificate file needs its key file and a key file its certificate file")
	}
	if len(k.CertPEM) > 0 && k.CertFile != "" {
		return nil, errors.New("kubeconfig: a client certificate is either embedded or a file, not both")
	}
	if len(k.CertPEM) == 0 && k.CertFile == "" && k.Token == "" {
		return nil, errors.New("kubeconfig: no credentials (want a client certificate and key, or a token)")
	}
	var c kcCluster
	c.Name = k.ClusterName
	c.Cluster.Server = k.Server
	c.Cluster.CertificateAuthorityData = k.CAPEM
	var usr kcUser
	usr.Name = k.UserName
	usr.User.ClientCertificateData = k.CertPEM
	usr.User.ClientKeyData = k.KeyPEM
	usr.User.ClientCertificate = k.CertFile
	usr.User.ClientKey = k.KeyFile
	usr.User.Token = k.Token
	var ctx kcContext
	ctx.Name = k.ContextName()
	ctx.Context.Cluster = k.ClusterName
	ctx.Context.User = k.UserName
	return yaml.Marshal(kcFile{
		APIVersion:     "v1",
		Kind:           "Config",
		Clusters:       []kcCluster{c},
		Users:          []kcUser{usr},
		Contexts:       []kcContext{ctx},
		CurrentContext: ctx.Name,
	})
}

// ParseKubeconfig reads back a kubeconfig written by Marshal (one cluster,
// user and context). It is for kiln's own files and tests, not a general
// kubeconfig loader.
func ParseKubeconfig(data []byte) (Kubeconfig, error) {
	var f kcFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		return Kubeconfig{}, fmt.Errorf("kubeconfig: %w", err)
	}
	if f.APIVersion != "v1" || f.Kind != "Config" {
		return Kubeconfig{}, fmt.Errorf("kubeconfig: apiVersion %q kind %q, want v1 Config", f.APIVersion, f.Kind)
	}
	if len(f.Clusters) != 1 || len(f.Users) != 1 || len(f.Contexts) != 1 {
		return Kubeconfig{}, fmt.Errorf("kubeconfig: want one cluster, user and context, have %d, %d and %d",
			len(f.Clusters), len(f.Users), len(f.Contexts))
	}
	c, u := f.Clusters[0], f.Users[0]
	return Kubeconfig{
		ClusterName: c.Name,
		Server:      c.Cluster.Server,
		UserName:    u.Name,
		CAPEM:       c.Cluster.CertificateAuthorityData,
		CertPEM:     u.User.ClientCertificateData,
		KeyPEM:      u.User.ClientKeyData,
		CertFile:    u.User.ClientCertificate,
		KeyFile:     u.User.ClientKey,
		Token:       u.User.Token,
	}, nil
}

// ClientCertificate returns the user's client certificate and key, for a
// TLS client that authenticates with them: embedded, or read now from
// their files.
func (k Kubeconfig) ClientCertificate() (tls.Certificate, error) {
	if k.CertFile != "" && len(k.CertPEM) == 0 {
		cert, err := tls.LoadX509KeyPair(k.CertFile, k.KeyFile)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("kubeconfig: user %q: %w", k.UserName, err)
		}
		return cert, nil
	}
	if len(k.CertPEM) == 0 || len(k.KeyPEM) == 0 {
		return tls.Certificate{}, fmt.Errorf("kubeconfig: user %q has no client certificate and key", k.UserName)
	}
	cert, err := tls.X509KeyPair(k.CertPEM, k.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("kubeconfig: user %q: %w", k.UserName, err)
	}
	return cert, nil
}

// TLSConfig returns the configuration of a mutual-TLS client of the
// kubeconfig's server: it presents the user's client certificate and
// trusts only the kubeconfig's CA. The server name is the host of the
// URL the client dials (net/http fills it in).
func (k Kubeconfig) TLSConfig() (*tls.Config, error) {
	cert, err := k.ClientCertificate()
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(k.CAPEM) {
		return nil, fmt.Errorf("kubeconfig: cluster %q: no CA certificate in certificate-authority-data", k.ClusterName)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// LoadKubeconfigTLS reads a kiln kubeconfig file and returns its server
// and TLSConfig: what a client of that server needs. Errors name the
// file.
func LoadKubeconfigTLS(path string) (server string, cfg *tls.Config, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	kc, err := ParseKubeconfig(data)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", path, err)
	}
	if cfg, err = kc.TLSConfig(); err != nil {
		return "", nil, fmt.Errorf("%s: %w", path, err)
	}
	return kc.Server, cfg, nil
}

// RewriteKubeconfigServer returns a kiln kubeconfig (see ParseKubeconfig)
// with its server replaced, e.g. by the host end of a forwarded port
// (https://127.0.0.1:PORT). Everything else is kept.
func RewriteKubeconfigServer(data []byte, server string) ([]byte, error) {
	kc, err := ParseKubeconfig(data)
	if err != nil {
		return nil, err
	}
	kc.Server = server
	return kc.Marshal()
}
