// Package cluster is the cluster directory: the files that make a cluster
// what it is (its name, API endpoint, network ranges, certificate
// authorities, service-account key, encryption key and bootstrap token).
// Every node built from a directory trusts its CAs, so it is generated once
// (Generate, "kiln gen cluster") and then only read (Load).
//
// The layout is fixed; the relative paths are the constants below and
// Paths gives them as absolute paths:
//
//	cluster.yaml                    name, endpoint, CIDRs, CA hash
//	admin.kubeconfig                cluster-admin client certificate
//	pki/ca.crt, pki/ca.key          cluster CA
//	pki/etcd/ca.crt, ca.key         etcd CA
//	pki/front-proxy-ca.crt, .key    front-proxy (aggregation) CA
//	pki/sa.key, pki/sa.pub          service-account signing key pair
//	secrets/encryption.key          32 random bytes, base64
//	secrets/bootstrap-token         "<id>.<secret>"
package cluster

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"kiln/internal/bounded"
	"kiln/pki"
)

// APIVersion and Kind identify a cluster.yaml document.
const (
	APIVersion = "kiln.dev/v1alpha1"
	Kind       = "Cluster"
)

// Files of a cluster directory, relative to it.
const (
	ConfigFile            = "cluster.yaml"
	AdminKubeconfigFile   = "admin.kubeconfig"
	PKIDir                = "pki"
	CACertFile            = "pki/ca.crt"
	CAKeyFile             = "pki/ca.key"
	EtcdDir               = "pki/etcd"
	EtcdCACertFile        = "pki/etcd/ca.crt"
	EtcdCAKeyFile         = "pki/etcd/ca.key"
	FrontProxyCACertFile  = "pki/front-proxy-ca.crt"
	FrontProxyCAKeyFile   = "pki/front-proxy-ca.key"
	ServiceAccountKeyFile = "pki/sa.key"
	ServiceAccountPubFile = "pki/sa.pub"
	SecretsDir            = "secrets"
	EncryptionKeyFile     = "secrets/encryption.key"
	BootstrapTokenFile    = "secrets/bootstrap-token"
)

// Common names of the CAs, and the admin user.
const (
	CAName           = "kiln-ca"
	EtcdCAName       = "kiln-etcd-ca"
	FrontProxyCAName = "kiln-front-proxy-ca"
	AdminUser        = "kubernetes-admin"
	// AdminGroup is bound to cluster-admin by the default RBAC policy
	// (kubeadm ≥1.29 uses kubeadm:cluster-admins plus a binding it
	// creates; system:masters needs nothing and always works).
	AdminGroup = "system:masters"
)

// Defaults.
const (
	DefaultEndpoint      = "https://127.0.0.1:6443"
	DefaultServiceCIDR   = "10.96.0.0/12"
	DefaultPodCIDR       = "10.244.0.0/16"
	DefaultClusterDomain = "cluster.local"
	// EncryptionKeySize is the length of the Secrets encryption key
	// (secretbox and aescbc both take 32 bytes).
	EncryptionKeySize = 32
	caValidity        = 10 * 365 * 24 * time.Hour
	adminValidity     = 365 * 24 * time.Hour
)

// Cluster is a loaded cluster directory.
type Cluster struct {
	Dir string // absolute

	Name          string
	Endpoint      string // https://HOST:PORT
	ServiceCIDR   string
	PodCIDR       string
	ClusterDNS    string
	ClusterDomain string
	Created       time.Time

	// The CAs. Key is nil on a CA loaded by LoadForWorker; EtcdCA and
	// FrontProxyCA are nil there.
	CA, EtcdCA, FrontProxyCA *pki.CA

	ServiceAccountKey    crypto.Signer // nil from LoadForWorker
	ServiceAccountPubPEM []byte
	EncryptionKey        []byte // raw, EncryptionKeySize bytes
	BootstrapToken       string // "id.secret"
	CAHash               string // pki.CAHash of CA.Cert
}

// Paths are the absolute paths of a cluster directory's files.
type Paths struct {
	Dir, Config, AdminKubeconfig         string
	CACert, CAKey                        string
	EtcdCACert, EtcdCAKey                string
	FrontProxyCACert, FrontProxyCAKey    string
	ServiceAccountKey, ServiceAccountPub string
	EncryptionKey, BootstrapToken        string
}

// PathsFor returns the paths of the files of the cluster directory dir
// (made absolute).
func PathsFor(dir string) Paths {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	j := func(rel string) string { return filepath.Join(dir, filepath.FromSlash(rel)) }
	return Paths{
		Dir:               dir,
		Config:            j(ConfigFile),
		AdminKubeconfig:   j(AdminKubeconfigFile),
		CACert:            j(CACertFile),
		CAKey:             j(CAKeyFile),
		EtcdCACert:        j(EtcdCACertFile),
		EtcdCAKey:         j(EtcdCAKeyFile),
		FrontProxyCACert:  j(FrontProxyCACertFile),
		FrontProxyCAKey:   j(FrontProxyCAKeyFile),
		ServiceAccountKey: j(ServiceAccountKeyFile),
		ServiceAccountPub: j(ServiceAccountPubFile),
		EncryptionKey:     j(EncryptionKeyFile),
		BootstrapToken:    j(BootstrapTokenFile),
	}
}

// Paths returns the absolute paths of the cluster's files.
func (c *Cluster) Paths() Paths { return PathsFor(c.Dir) }

// BootstrapTokenID is the public half of the bootstrap token.
func (c *Cluster) BootstrapTokenID() string {
	id, _, _ := strings.Cut(c.BootstrapToken, ".")
	return id
}

// EndpointHostPort is the endpoint without its scheme: "HOST:PORT".
func (c *Cluster) EndpointHostPort() string { return strings.TrimPrefix(c.Endpoint, "https://") }

// configFile is cluster.yaml. Values are validated on write and read.
type configFile struct {
	APIVersion    string `json:"apiVersion"`
	Kind          string `json:"kind"`
	Name          string `json:"name"`
	Endpoint      string `json:"endpoint"`
	ServiceCIDR   string `json:"serviceCIDR"`
	PodCIDR       string `json:"podCIDR"`
	ClusterDNS    string `json:"clusterDNS"`
	ClusterDomain string `json:"clusterDomain"`
	CAHash        string `json:"caHash"`
	Created       string `json:"created"`
}

// marshal writes cluster.yaml with the fields in a readable order (yaml
// marshalling of a struct sorts them). Every value is quoted: a name such
// as "no" or "123" must stay a string.
func (f *configFile) marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# The cluster %s, written by \"kiln gen cluster\" with the files next to it.\n", f.Name)
	b.WriteString("# Every node built from this directory trusts its CAs: keep pki/ and\n")
	b.WriteString("# secrets/ private. Make a new cluster rather than edit the values below.\n")
	for _, kv := range [][2]string{
		{"apiVersion", f.APIVersion},
		{"kind", f.Kind},
		{"name", f.Name},
		{"endpoint", f.Endpoint},
		{"serviceCIDR", f.ServiceCIDR},
		{"podCIDR", f.PodCIDR},
		{"clusterDNS", f.ClusterDNS},
		{"clusterDomain", f.ClusterDomain},
		{"caHash", f.CAHash},
		{"created", f.Created},
	} {
		fmt.Fprintf(&b, "%s: %s\n", kv[0], strconv.Quote(kv[1]))
	}
	return b.Bytes()
}

// validate checks every field, filling nothing in: a loaded file must be
// complete.
func (f *configFile) validate() error {
	if f.APIVersion != APIVersion || f.Kind != Kind {
		return fmt.Errorf("apiVersion %s, kind %s: want apiVersion %s, kind %s", bounded.Quote(f.APIVersion), bounded.Quote(f.Kind), APIVersion, Kind)
	}
	if err := ValidateName(f.Name); err != nil {
		return err
	}
	ep, err := NormalizeEndpoint(f.Endpoint)
	if err != nil {
		return err
	}
	if ep != f.Endpoint {
		return fmt.Errorf("endpoint %s: want the form https://HOST:PORT (%s)", bounded.Quote(f.Endpoint), ep)
	}
	svc, _, err := parseCIDRs(f.ServiceCIDR, f.PodCIDR)
	if err != nil {
		return err
	}
	dns, err := netip.ParseAddr(f.ClusterDNS)
	if err != nil || !svc.Contains(dns) {
		return fmt.Errorf("clusterDNS %s: want an IP address inside serviceCIDR %s", bounded.Quote(f.ClusterDNS), svc)
	}
	if !domainRe.MatchString(f.ClusterDomain) || len(f.ClusterDomain) > 253 {
		return fmt.Errorf("clusterDomain %s: want a DNS domain such as %s", bounded.Quote(f.ClusterDomain), DefaultClusterDomain)
	}
	if !caHashRe.MatchString(f.CAHash) {
		return fmt.Errorf("caHash %s: want sha256:<64 hex digits>", bounded.Quote(f.CAHash))
	}
	if _, err := time.Parse(time.RFC3339, f.Created); err != nil {
		return fmt.Errorf("created %s: want an RFC 3339 time", bounded.Quote(f.Created))
	}
	return nil
}

var (
	nameRe   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	domainRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	caHashRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	tokenRe  = regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)
)

// ValidateBootstrapToken checks a bootstrap token: "<id>.<secret>", id 6
// and secret 16 characters of a-z and 0-9.
func ValidateBootstrapToken(token string) error {
	if !tokenRe.MatchString(token) {
		return errors.New(`want "<id>.<secret>", id 6 and secret 16 characters a-z 0-9 (kiln gen token makes one)`)
	}
	return nil
}

// ValidateName checks a cluster name: a DNS-1123 label.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("cluster name is empty: want a DNS label such as kiln or prod-1")
	}
	if len(name) > 63 || !nameRe.MatchString(name) {
		return fmt.Errorf("cluster name %s: want a DNS label: at most 63 characters a-z, 0-9 and '-', starting and ending with a letter or digit (e.g. kiln, prod-1)", bounded.Quote(name))
	}
	return nil
}

// NormalizeEndpoint accepts "HOST:PORT" or "https://HOST:PORT" (HOST an IP
// address, "[IPv6]", or a DNS name) and returns "https://HOST:PORT".
func NormalizeEndpoint(ep string) (string, error) {
	bad := func(why string) error {
		return fmt.Errorf("endpoint %s: %s; want HOST:PORT or https://HOST:PORT, e.g. 192.168.1.10:6443", bounded.Quote(ep), why)
	}
	if ep == "" {
		return "", bad("empty")
	}
	hostPort := ep
	if i := strings.Index(ep, "://"); i >= 0 {
		if ep[:i] != "https" {
			return "", bad(fmt.Sprintf("scheme %s (the API server speaks only https)", bounded.Quote(ep[:i])))
		}
		u, err := url.Parse(ep)
		if err != nil {
			return "", bad("not a URL")
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return "", bad("a URL with more than scheme, host and port")
		}
		hostPort = u.Host
	}
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return "", bad("no port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
		return "", bad(fmt.Sprintf("port %s is not a number from 1 to 65535", bounded.Quote(port)))
	}
	if host == "" {
		return "", bad("no host")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return "", bad("an IPv6 zone")
		}
		host = ip.Unmap().String()
	} else {
		host = strings.ToLower(host)
		if len(host) > 253 || !domainRe.MatchString(host) {
			return "", bad(fmt.Sprintf("host %s is neither an IP address nor a DNS name", bounded.Quote(host)))
		}
	}
	return "https://" + net.JoinHostPort(host, port), nil
}

// parseCIDRs checks the service and pod ranges: network addresses, of one
// family, not overlapping, the service range a size the API server accepts.
func parseCIDRs(service, pod string) (svc, pods netip.Prefix, err error) {
	parse := func(field, s string) (netip.Prefix, error) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("%s %s: want a CIDR such as %s", field, bounded.Quote(s), map[string]string{
				"serviceCIDR": DefaultServiceCIDR, "podCIDR": DefaultPodCIDR}[field])
		}
		if p.Masked() != p {
			return p, fmt.Errorf("%s %s: host bits set; did you mean %s?", field, bounded.Quote(s), p.Masked())
		}
		return p, nil
	}
	if svc, err = parse("serviceCIDR", service); err != nil {
		return
	}
	if pods, err = parse("podCIDR", pod); err != nil {
		return
	}
	if svc.Addr().Is4() != pods.Addr().Is4() {
		return svc, pods, fmt.Errorf("serviceCIDR %s and podCIDR %s: want the same IP family", svc, pods)
	}
	if svc.Overlaps(pods) {
		return svc, pods, fmt.Errorf("serviceCIDR %s and podCIDR %s overlap", svc, pods)
	}
	// The API server's service IP allocator refuses IPv6 ranges shorter
	// than /64 (pkg/registry/core/service/ipallocator).
	if svc.Addr().Is6() && svc.Bits() < 64 {
		return svc, pods, fmt.Errorf("serviceCIDR %s: too large for the API server (want /64 or smaller)", svc)
	}
	// Service IPs 1 (the kubernetes service) and 10 (DNS) must exist.
	if svc.Addr().BitLen()-svc.Bits() < 4 {
		return svc, pods, fmt.Errorf("serviceCIDR %s: too small (want at least 16 addresses)", svc)
	}
	return svc, pods, nil
}

// nthAddr is the n-th address of p (n small).
func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

func decodeEncryptionKey(data []byte) ([]byte, error) {
	s := strings.TrimSpace(string(data))
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("want %d bytes base64, got text that is not base64", EncryptionKeySize)
	}
	if len(key) != EncryptionKeySize {
		return nil, fmt.Errorf("want %d bytes base64, got %d", EncryptionKeySize, len(key))
	}
	return key, nil
}
