package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"

	"kiln/internal/bounded"
	"kiln/pki"
)

// Load reads everything a master needs from the cluster directory dir and
// checks it: cluster.yaml (strict), the three CAs with their keys, the
// service-account key pair, the encryption key and the bootstrap token.
// The first problem found is the error, naming the directory, the file and
// what to do about it.
func Load(dir string) (*Cluster, error) { return load(dir, true) }

// LoadForWorker reads what a worker needs: cluster.yaml (endpoint, CA hash)
// and the bootstrap token; the cluster CA certificate (never its key) only
// if the directory has it, checked against the hash. Without it CA is nil:
// the worker learns the certificate from the master when it joins. EtcdCA,
// FrontProxyCA, ServiceAccountKey and EncryptionKey are always nil.
func LoadForWorker(dir string) (*Cluster, error) { return load(dir, false) }

type loader struct {
	dir string // as given, for messages
	p   Paths
}

// fail words an error about one file of the directory.
func (l *loader) fail(rel string, err error) error {
	var fe *pki.FileError
	if errors.As(err, &fe) {
		if r, rerr := filepath.Rel(l.p.Dir, fe.Path); rerr == nil && !strings.HasPrefix(r, "..") {
			rel = filepath.ToSlash(r)
		}
		err = fe.Err
	}
	hint := fmt.Sprintf(`restore it from a backup, or start over with "kiln gen cluster --force --out %s", which invalidates every node built from this cluster`, l.dir)
	if rel == ConfigFile && errors.Is(err, fs.ErrNotExist) {
		hint = fmt.Sprintf(`generate a cluster with "kiln gen cluster --out %s"`, l.dir)
	}
	// Other files the message names, relative too.
	msg := strings.ReplaceAll(err.Error(), l.p.Dir+string(filepath.Separator), "")
	return fmt.Errorf("cluster directory %s: %s: %s (%s)", l.dir, rel, msg, hint)
}

// read reads a file of the directory, capped: cluster.yaml at
// bounded.MaxConfigFile, the keys, certificates and the token at
// bounded.MaxKeyFile (pki.ReadFile).
func (l *loader) read(rel string) ([]byte, error) {
	max := int64(bounded.MaxKeyFile)
	if rel == ConfigFile {
		max = bounded.MaxConfigFile
	}
	data, err := pki.ReadFileMax(filepath.Join(l.p.Dir, filepath.FromSlash(rel)), max)
	if err != nil {
		return nil, l.fail(rel, err)
	}
	return data, nil
}

func load(dir string, master bool) (*Cluster, error) {
	if dir == "" {
		return nil, errors.New("no cluster directory given")
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("cluster directory %s does not exist (create one with: kiln gen cluster --name NAME --out %s)", dir, dir)
	case err != nil:
		return nil, fmt.Errorf("cluster directory: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("cluster directory %s is not a directory", dir)
	}
	l := &loader{dir: dir, p: PathsFor(dir)}

	data, err := l.read(ConfigFile)
	if err != nil {
		return nil, err
	}
	if err := oneDocument(data); err != nil {
		return nil, l.fail(ConfigFile, err)
	}
	var f configFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, l.fail(ConfigFile, yamlError(err))
	}
	if err := f.validate(); err != nil {
		return nil, l.fail(ConfigFile, err)
	}
	created, _ := time.Parse(time.RFC3339, f.Created) // validated
	c := &Cluster{
		Dir:           l.p.Dir,
		Name:          f.Name,
		Endpoint:      f.Endpoint,
		ServiceCIDR:   f.ServiceCIDR,
		PodCIDR:       f.PodCIDR,
		ClusterDNS:    f.ClusterDNS,
		ClusterDomain: f.ClusterDomain,
		Created:       created,
		CAHash:        f.CAHash,
	}

	if master {
		if c.CA, err = pki.LoadCA(l.p.CACert, l.p.CAKey); err != nil {
			return nil, l.fail(CACertFile, err)
		}
	} else if _, statErr := os.Stat(l.p.CACert); statErr == nil {
		cert, certPEM, err := pki.LoadCACert(l.p.CACert)
		if err != nil {
			return nil, l.fail(CACertFile, err)
		}
		c.CA = &pki.CA{Cert: cert, CertPEM: certPEM}
	}
	// A worker may carry only the CA's hash: it learns the certificate from
	// the master at join and checks it against the hash then.
	if c.CA != nil && pki.CAHash(c.CA.Cert) != f.CAHash {
		h := pki.CAHash(c.CA.Cert)
		return nil, l.fail(ConfigFile, fmt.Errorf("caHash %s does not match %s (%s): the CA was replaced, or the files come from two clusters",
			f.CAHash, CACertFile, h))
	}

	data, err = l.read(BootstrapTokenFile)
	if err != nil {
		return nil, err
	}
	c.BootstrapToken = strings.TrimSpace(string(data))
	if !tokenRe.MatchString(c.BootstrapToken) {
		return nil, l.fail(BootstrapTokenFile, errors.New(`want one line "<id>.<secret>", id 6 and secret 16 characters a-z 0-9`))
	}
	if !master {
		return c, nil
	}

	if c.EtcdCA, err = pki.LoadCA(l.p.EtcdCACert, l.p.EtcdCAKey); err != nil {
		return nil, l.fail(EtcdCACertFile, err)
	}
	if c.FrontProxyCA, err = pki.LoadCA(l.p.FrontProxyCACert, l.p.FrontProxyCAKey); err != nil {
		return nil, l.fail(FrontProxyCACertFile, err)
	}

	if data, err = l.read(ServiceAccountKeyFile); err != nil {
		return nil, err
	}
	if c.ServiceAccountKey, err = pki.ParseKeyPEM(data); err != nil {
		return nil, l.fail(ServiceAccountKeyFile, err)
	}
	if c.ServiceAccountPubPEM, err = l.read(ServiceAccountPubFile); err != nil {
		return nil, err
	}
	pub, err := pki.ParsePublicKeyPEM(c.ServiceAccountPubPEM)
	if err != nil {
		return nil, l.fail(ServiceAccountPubFile, err)
	}
	if !pki.PublicKeysEqual(pub, c.ServiceAccountKey.Public()) {
		return nil, l.fail(ServiceAccountPubFile, fmt.Errorf("not the public half of %s", ServiceAccountKeyFile))
	}

	if data, err = l.read(EncryptionKeyFile); err != nil {
		return nil, err
	}
	if c.EncryptionKey, err = decodeEncryptionKey(data); err != nil {
		return nil, l.fail(EncryptionKeyFile, err)
	}
	return c, nil
}

// oneDocument refuses a file of several YAML documents: the parser would
// read the first and silently ignore the others. Empty documents (a
// trailing "---") do not count; errors inside a document are left to the
// strict parse that follows.
func oneDocument(data []byte) error {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	for n := 0; ; n++ {
		var doc yamlv3.Node
		if err := dec.Decode(&doc); err != nil {
			return nil // the end, or a syntax error the strict parse reports
		}
		empty := len(doc.Content) == 0 || (doc.Content[0].Kind == yamlv3.ScalarNode && doc.Content[0].ShortTag() == "!!null")
		if n > 0 && !empty {
			return fmt.Errorf("a second YAML document at line %d: one document per file", doc.Line)
		}
	}
}

// yamlError strips sigs.k8s.io/yaml's conversion layers from an error and
// makes it one line: `error unmarshaling JSON: while decoding JSON: json:
// unknown field "x"` becomes `unknown field "x"`.
func yamlError(err error) error {
	s := err.Error()
	for _, p := range []string{"error converting YAML to JSON: ", "error unmarshaling JSON: ", "while decoding JSON: ", "json: ", "yaml: unmarshal errors:"} {
		s = strings.TrimPrefix(s, p)
	}
	return errors.New(strings.Join(strings.Fields(s), " "))
}
