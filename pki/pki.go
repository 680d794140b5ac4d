// Package pki makes and reads the certificates, keys and kubeconfigs of a
// kiln cluster, with the standard library only (no Kubernetes packages, so
// the host CLI stays small).
//
// Keys are ECDSA P-256 and written as "EC PRIVATE KEY" (SEC 1) PEM, the
// form kubeadm and openssl write; every Kubernetes component and etcd reads
// it. Reading also accepts PKCS #1 RSA and PKCS #8 keys.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"kiln/internal/bounded"
)

const (
	// DefaultCAValidity is how long NewCA's certificate is valid when the
	// caller passes 0.
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// DefaultValidity is how long an issued certificate is valid when the
	// request does not say.
	DefaultValidity = 365 * 24 * time.Hour
	// backdate is subtracted from NotBefore so that a machine whose clock
	// is a little behind still accepts a certificate issued just now.
	backdate = 5 * time.Minute
)

// PEM block types.
const (
	blockCertificate = "CERTIFICATE"
	blockECKey       = "EC PRIVATE KEY"
	blockRSAKey      = "RSA PRIVATE KEY"
	blockPKCS8Key    = "PRIVATE KEY"
	blockPublicKey   = "PUBLIC KEY"
)

// CA is a certificate authority: its certificate, the certificate's PEM
// encoding, and its private key. Key is nil when only the certificate is
// available (a worker trusts the cluster CA but cannot sign with it).
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// FileError is an error about one file: "PATH: what is wrong". Loaders
// return it so a caller can re-word the path (for example relative to a
// cluster directory) with errors.As. A missing file's Err matches
// fs.ErrNotExist and reads "no such file".
type FileError struct {
	Path string
	Err  error
}

func (e *FileError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// noSuchFile reads "no such file" and is fs.ErrNotExist for errors.Is.
type noSuchFile struct{}

func (noSuchFile) Error() string        { return "no such file" }
func (noSuchFile) Is(target error) bool { return target == fs.ErrNotExist }

func fileErr(path string, err error) error { return &FileError{Path: path, Err: err} }

// ReadFile reads a key, certificate, kubeconfig or token file of at most
// bounded.MaxKeyFile (1 MiB), returning a *FileError: "PATH: no such
// file" when it is missing, "PATH: larger than 1 MiB, the most kiln reads
// from such a file" for a bigger one (or one that never ends, such as a
// symlink to /dev/zero), "PATH: <reason>" otherwise.
func ReadFile(path string) ([]byte, error) { return ReadFileMax(path, bounded.MaxKeyFile) }

// ReadFileMax is ReadFile with another cap (cluster.yaml is a config:
// bounded.MaxConfigFile).
func ReadFileMax(path string, max int64) ([]byte, error) {
	data, err := bounded.ReadFile(path, max)
	if err == nil {
		return data, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fileErr(path, noSuchFile{})
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // the path is already in FileError
	}
	return nil, fileErr(path, err)
}

// NewCA makes a self-signed CA certificate with a new ECDSA P-256 key.
// validity 0 means DefaultCAValidity.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("new CA: empty common name")
	}
	if validity <= 0 {
		validity = DefaultCAValidity
	}
	key, _, err := NewKey()
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate).UTC(),
		NotAfter:              now.Add(validity).UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCert(der)}, nil
}

// LoadCA reads a CA certificate and its private key and checks that the
// certificate is a CA, is valid now, and matches the key. Errors are
// *FileError naming the file at fault.
func LoadCA(certPath, keyPath string) (*CA, error) {
	cert, certPEM, err := LoadCACert(certPath)
	if err != nil {
		return nil, err
	}
	data, err := ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	key, err := ParseKeyPEM(data)
	if err != nil {
		return nil, fileErr(keyPath, err)
	}
	if !KeyMatches(cert, key) {
		return nil, fileErr(keyPath, fmt.Errorf("key does not match certificate %s", certPath))
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// LoadCACert reads a CA certificate (without its key) and checks that it is
// a CA and valid now. It returns the certificate and its PEM encoding (the
// first certificate in the file).
func LoadCACert(certPath string) (*x509.Certificate, []byte, error) {
	data, err := ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	cert, err := ParseCertPEM(data)
	if err != nil {
		return nil, nil, fileErr(certPath, err)
	}
	if err := CheckCACert(cert, time.Now()); err != nil {
		return nil, nil, fileErr(certPath, err)
	}
	return cert, encodeCert(cert.Raw), nil
}

// CheckCACert reports whether cert can act as a CA at time now.
func CheckCACert(cert *x509.Certificate, now time.Time) error {
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return fmt.Errorf("certificate %q is not a CA certificate", cert.Subject.CommonName)
	}
	if now.After(cert.NotAfter) {
		return fmt.Errorf("certificate %q expired on %s", cert.Subject.CommonName, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Add(backdate).Before(cert.NotBefore) {
		return fmt.Errorf("certificate %q is not valid until %s (is this machine's clock right?)",
			cert.Subject.CommonName, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// ParseCertPEM parses the first CERTIFICATE block of data. Text before the
// block (comments) is ignored.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("not a PEM certificate")
		}
		if block.Type != blockCertificate {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("invalid certificate: %w", err)
		}
		return cert, nil
	}
}

// ParseKeyPEM parses the first private key block of data: EC (SEC 1), RSA
// (PKCS #1) or PKCS #8 holding an ECDSA, RSA or Ed25519 key.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("not a PEM private key")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case blockECKey:
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case blockRSAKey:
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case blockPKCS8Key:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			// x509's ASN.1 detail ("asn1: structure error: tags don't
			// match (16 vs {class:0 ...") helps nobody.
			msg, _, _ := strings.Cut(err.Error(), ": asn1:")
			return nil, fmt.Errorf("invalid %s: %s", block.Type, msg)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
		return signer, nil
	}
}

// ParsePublicKeyPEM parses the first PUBLIC KEY (PKIX) block of data.
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("not a PEM public key")
		}
		if block.Type != blockPublicKey {
			continue
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("invalid public key: %w", err)
		}
		return pub, nil
	}
}

// KeyMatches reports whether key is the private key of cert.
func KeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	return PublicKeysEqual(cert.PublicKey, key.Public())
}

// PublicKeysEqual reports whether a and b are the same public key.
func PublicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// CertRequest describes a certificate for CA.Issue.
type CertRequest struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	// Server and Client set the extended key usages; at least one is
	// required.
	Server, Client bool
	// Validity defaults to DefaultValidity. The certificate never outlives
	// the CA: NotAfter is capped at the CA's.
	Validity time.Duration
	// Key, when set, is the key to certify (a renewal keeps the key, so
	// a reader that loads the certificate and the key from two files
	// never sees a pair that does not match); nil makes a new one.
	Key crypto.Signer
}

// RenewalFraction is how much of a certificate's lifetime passes before
// kiln renews it: two thirds, so a third of it is left for the renewal
// to be picked up, or retried.
const RenewalFraction = 2.0 / 3

// RenewAt is when a certificate is due for renewal: RenewalFraction of
// its lifetime (NotBefore to NotAfter) after NotBefore.
func RenewAt(cert *x509.Certificate) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotBefore.Add(time.Duration(float64(life) * RenewalFraction))
}

// Issue makes a new ECDSA P-256 key and a certificate for it signed by ca.
func (ca *CA) Issue(req CertRequest) (certPEM, keyPEM []byte, err error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, nil, errors.New("issue certificate: the CA's private key is not available")
	}
	if req.CommonName == "" {
		return nil, nil, errors.New("issue certificate: empty common name")
	}
	if !req.Server && !req.Client {
		return nil, nil, fmt.Errorf("issue certificate %q: neither server nor client usage requested", req.CommonName)
	}
	validity := req.Validity
	if validity <= 0 {
		validity = DefaultValidity
	}
	key := req.Key
	if key == nil {
		key, keyPEM, err = NewKey()
	} else {
		keyPEM, err = KeyPEM(key)
	}
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	// A short-lived certificate (a test's) is backdated less, so that
	// most of its lifetime is ahead of it.
	back := min(backdate, validity/10)
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.CommonName, Organization: req.Organization},
		DNSNames:     req.DNSNames,
		IPAddresses:  req.IPs,
		NotBefore:    now.Add(-back).UTC(),
		NotAfter:     notAfter.UTC(),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// A leaf: BasicConstraints CA:FALSE, as kubeadm writes.
		BasicConstraintsValid: true,
	}
	if req.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if req.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate %q: %w", req.CommonName, err)
	}
	return encodeCert(der), keyPEM, nil
}

// NewKey makes an ECDSA P-256 private key and returns it with its PEM
// encoding ("EC PRIVATE KEY").
func NewKey() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("new key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("new key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: blockECKey, Bytes: der}), nil
}

// KeyPEM encodes a private key: EC keys as "EC PRIVATE KEY", RSA keys as
// "RSA PRIVATE KEY", anything else as PKCS #8 "PRIVATE KEY".
func KeyPEM(key crypto.Signer) ([]byte, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: blockECKey, Bytes: der}), nil
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: blockRSAKey, Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	default:
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: blockPKCS8Key, Bytes: der}), nil
	}
}

// PublicKeyPEM encodes key's public half as a PKIX "PUBLIC KEY" block, the
// form kube-apiserver's --service-account-key-file reads.
func PublicKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: blockPublicKey, Bytes: der}), nil
}

// CAHash is the kubeadm-compatible pin of a CA certificate's public key:
// "sha256:" and the hex SHA-256 of its DER SubjectPublicKeyInfo (what
// "kubeadm join --discovery-token-ca-cert-hash" takes).
func CAHash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// WriteFile writes data to path atomically (a temporary file in the same
// directory, then rename), creating missing parent directories. secret
// files are mode 0600 in directories created 0700; others are 0644 in
// directories created 0755. Existing directories keep their mode.
func WriteFile(path string, data []byte, secret bool) (err error) {
	fileMode, dirMode := os.FileMode(0o644), os.FileMode(0o755)
	if secret {
		fileMode, dirMode = 0o600, 0o700
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp makes the file 0600, so a secret is never readable by
	// others, even for a moment.
	if err := tmp.Chmod(fileMode); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp.Name(), path)
}

// tokenChars is the alphabet of bootstrap token ids and secrets.
const tokenChars = "abcdefghijklmnopqrstuvwxyz0123456789"

// NewBootstrapToken makes a Kubernetes bootstrap token: id matches
// [a-z0-9]{6} and secret [a-z0-9]{16}; the token is "id.secret".
func NewBootstrapToken() (id, secret string, err error) {
	s, err := randomString(6 + 16)
	if err != nil {
		return "", "", fmt.Errorf("bootstrap token: %w", err)
	}
	return s[:6], s[6:], nil
}

// randomString returns n characters drawn uniformly from tokenChars.
func randomString(n int) (string, error) {
	// Rejection sampling: 252 = 7*36 is the largest multiple of 36 that
	// fits a byte, so byte%36 is uniform over accepted bytes.
	const limit = 252
	out := make([]byte, 0, n)
	buf := make([]byte, 2*n)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", err
		}
		for _, b := range buf {
			if b < limit && len(out) < n {
				out = append(out, tokenChars[int(b)%len(tokenChars)])
			}
		}
	}
	return string(out), nil
}

func newSerial() (*big.Int, error) {
	// 128 random bits, positive (RFC 5280 allows up to 20 octets).
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: blockCertificate, Bytes: bytes.Clone(der)})
}

// EncodeCertPEM encodes a certificate as PEM.
func EncodeCertPEM(c *x509.Certificate) []byte { return encodeCert(c.Raw) }

// CurrentPair is the file name of a certificate and key the kubelet
// rotates, in its certificate directory: the kubelet keeps
// PREFIX-current.pem (prefix kubelet-client or kubelet-server), a symlink
// to the newest PREFIX-<time>.pem.
func CurrentPair(prefix string) string { return prefix + "-current.pem" }

// WriteRotatedPair writes a certificate and its key (PEM, in one 0600
// file) the way the kubelet keeps those it rotates: DIR/PREFIX-<time>.pem,
// then the symlink DIR/PREFIX-current.pem pointed at it by a rename, so a
// reader of the current pair (the kubelet, and the node's components
// through its kubeconfig) never sees half of one, and the kubelet goes on
// rotating it (it refuses to replace a current pair that is a regular
// file). It returns the current pair's path.
func WriteRotatedPair(dir, prefix string, pairPEM []byte) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, prefix+"-"+time.Now().UTC().Format("2006-01-02-15-04-05")+".pem")
	if err := WriteFile(file, pairPEM, true); err != nil {
		return "", err
	}
	current := filepath.Join(dir, CurrentPair(prefix))
	tmp := current + ".kiln-tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(file, tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, current); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return current, nil
}
