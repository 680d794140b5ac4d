package node

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"kiln/internal/bounded"
)

// Registries say where containerd pulls the images of pods from, in the
// shape of k3s's registries.yaml: mirrors per registry, and per registry
// host (a mirror's or a registry's own) the CA that signs its certificate
// and the credentials it wants. Images baked into the node image need
// none of it: they are imported at boot, and a pod pulls one only when
// its imagePullPolicy is Always.
//
//	registries:
//	  mirrors:
//	    docker.io:
//	      endpoints: [https://mirror.example.com:5000]
//	  configs:
//	    mirror.example.com:5000:
//	      auth: {username: kiln, password: "…"}
//	      tls: {caFile: /etc/kiln/registry-ca.pem}
//
// Layers merge as the config's other mappings do (Overlay): registry by
// registry (host by host), a later layer's entry replacing an earlier
// one's whole, null keeping it. Config.Validate checks the result.
type Registries struct {
	// Mirrors are keyed by the registry as image references name it
	// (docker.io, registry.example.com:5000), or AnyRegistry for every
	// registry without an entry of its own.
	Mirrors map[string]Mirror `yaml:"mirrors,omitempty"`
	// Configs are keyed by the host kiln's containerd connects to, as
	// an endpoint's URL writes it (with the port if it has one): a
	// mirror's, or a registry's own (docker.io stands for
	// DockerHubHost).
	Configs map[string]RegistryConfig `yaml:"configs,omitempty"`
}

// Mirror is where to pull one registry's images from.
type Mirror struct {
	// Endpoints are tried in order: https://HOST[:PORT][/PATH], or
	// http://… for a mirror that speaks plain HTTP. HTTP is never
	// assumed: each endpoint says its scheme.
	Endpoints []string `yaml:"endpoints"`
	// Upstream adds the registry itself after the endpoints. Default
	// true; false pulls from the endpoints only (an air-gapped site).
	Upstream *bool `yaml:"upstream,omitempty"`
}

// UsesUpstream reports whether the registry itself is tried after the
// endpoints.
func (m Mirror) UsesUpstream() bool { return m.Upstream == nil || *m.Upstream }

// RegistryConfig is how to talk to one registry host.
type RegistryConfig struct {
	// Auth are the credentials the host wants, for every pull that
	// brings none of its own (a pod's imagePullSecrets win).
	Auth *RegistryAuth `yaml:"auth,omitempty"`
	// TLS is the CA that signs the host's certificate, when it is not
	// a public one (the image carries no CA certificates at all).
	TLS *RegistryTLS `yaml:"tls,omitempty"`
}

// RegistryAuth are a registry host's credentials: a username and a
// password (a registry's token usually goes as the password), or an
// identity token (the refresh token of an OAuth2 registry login).
type RegistryAuth struct {
	Username      string `yaml:"username,omitempty"`
	Password      Secret `yaml:"password,omitempty"`
	IdentityToken Secret `yaml:"identityToken,omitempty"`
}

// RegistryTLS is the CA a registry host's certificate is verified with:
// the PEM itself, or a file on the node.
type RegistryTLS struct {
	// CA is one or more PEM certificates (-----BEGIN CERTIFICATE-----).
	CA string `yaml:"ca,omitempty"`
	// CAFile is an absolute path on the node to such a file.
	CAFile string `yaml:"caFile,omitempty"`
}

// Secret is a credential from the config. It prints as "(secret)", never
// as itself (fmt's %v, %+v, %s, %#v, and slog), so that a config printed
// whole leaks nothing; YAML reads and writes it as the plain string.
type Secret string

// String hides the value.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "(secret)"
}

// GoString hides the value from %#v.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// LogValue hides the value from slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// UnmarshalYAML takes the text as written. The decoder would resolve an
// explicit tag (password: !!int hunter2) and echo the value in its error.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || (n.Style&yaml.TaggedStyle != 0 && n.ShortTag() != "!!str") {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: a credential is text: write it plainly, quoted if need be, with no tag", n.Line)}}
	}
	*s = Secret(n.Value)
	return nil
}

const (
	// DockerHub is the registry image references name when they name
	// none ("nginx" is docker.io/library/nginx).
	DockerHub = "docker.io"
	// DockerHubHost is the host containerd connects to for DockerHub.
	DockerHubHost = "registry-1.docker.io"
	// AnyRegistry is the registries.mirrors key for every registry
	// without an entry of its own.
	AnyRegistry = "*"
)

// UpstreamURL is the URL of a registry itself: https, at DockerHubHost
// for DockerHub.
func UpstreamURL(registry string) string {
	if registry == DockerHub {
		return "https://" + DockerHubHost
	}
	return "https://" + registry
}

// MirrorFor is the mirror entry that applies to a registry: its own, else
// AnyRegistry's.
func (r Registries) MirrorFor(registry string) (Mirror, bool) {
	if m, ok := r.Mirrors[registry]; ok {
		return m, true
	}
	m, ok := r.Mirrors[AnyRegistry]
	return m, ok
}

// ConfigFor is the config of the host containerd connects to (host[:port]
// as in an endpoint's URL); the DockerHub entry stands for DockerHubHost.
func (r Registries) ConfigFor(host string) (RegistryConfig, bool) {
	if c, ok := r.Configs[host]; ok {
		return c, true
	}
	if host == DockerHubHost {
		c, ok := r.Configs[DockerHub]
		return c, ok
	}
	return RegistryConfig{}, false
}

// Validate checks the registries alone, as Config.Validate does within a
// config: for a Registries built in Go (a test's, a host tool's layer).
func (r Registries) Validate() error {
	errs := r.validate()
	problems := make([]string, len(errs))
	for i, e := range errs {
		problems[i] = e.Error()
	}
	return joinErrors(problems)
}

// validate is Config.Validate's part: each entry alone, then, when they
// are all sound, across entries (a mirror of one layer may meet a host
// config of another).
func (r Registries) validate() []error {
	var problems []string
	for _, k := range slices.Sorted(maps.Keys(r.Mirrors)) {
		field := mirrorField(k)
		if err := checkMirrorKey(k); err != nil {
			problems = append(problems, field+": "+err.Error())
			continue
		}
		problems = append(problems, validateMirror(field, r.Mirrors[k])...)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Configs)) {
		field := configField(k)
		if err := checkRegistryHost(k); err != nil {
			problems = append(problems, field+": "+err.Error())
			continue
		}
		problems = append(problems, validateRegistryConfig(field, r.Configs[k])...)
	}
	if len(problems) == 0 {
		problems = r.crossCheck()
	}
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = errors.New(p)
	}
	return errs
}

// Clone returns a deep copy: Config.Clone's part. The decoder writes a
// later layer's entries into the maps it finds, so an Overlay's base
// must not share them.
func (r Registries) Clone() Registries {
	var out Registries
	if r.Mirrors != nil {
		out.Mirrors = make(map[string]Mirror, len(r.Mirrors))
		for k, m := range r.Mirrors {
			m.Endpoints = slices.Clone(m.Endpoints)
			if m.Upstream != nil {
				v := *m.Upstream
				m.Upstream = &v
			}
			out.Mirrors[k] = m
		}
	}
	if r.Configs != nil {
		out.Configs = make(map[string]RegistryConfig, len(r.Configs))
		for k, c := range r.Configs {
			if c.Auth != nil {
				v := *c.Auth
				c.Auth = &v
			}
			if c.TLS != nil {
				v := *c.TLS
				c.TLS = &v
			}
			out.Configs[k] = c
		}
	}
	return out
}

func mirrorField(k string) string { return "registries.mirrors[" + bounded.Quote(k) + "]" }
func configField(k string) string { return "registries.configs[" + bounded.Quote(k) + "]" }

func checkMirrorKey(k string) error {
	if k == AnyRegistry {
		return nil
	}
	return checkRegistryHost(k)
}

var dnsName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// checkRegistryHost checks a host as image references and URLs write it:
// a name or an IP address (IPv6 in brackets), and a port unless it is
// the scheme's.
func checkRegistryHost(s string) error {
	const want = "want a host name or IP address with a port unless it is 443, as image references write it (e.g. docker.io, registry.example.com:5000, 10.0.0.5:5000)"
	if strings.Contains(s, "://") || strings.Contains(s, "/") {
		return fmt.Errorf("%s is not a host: write the host alone, without a scheme or a path (%s)", bounded.Quote(s), want)
	}
	host, port := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return fmt.Errorf("%s is not a host: %s", bounded.Quote(s), want)
		}
		host, port = s[1:end], s[end+1:]
		if port != "" && !strings.HasPrefix(port, ":") {
			return fmt.Errorf("%s is not a host: %s", bounded.Quote(s), want)
		}
		port = strings.TrimPrefix(port, ":")
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return fmt.Errorf("%s is not a host: an address in brackets is an IPv6 one (%s)", bounded.Quote(s), want)
		}
	case strings.Count(s, ":") == 1:
		host, port, _ = strings.Cut(s, ":")
	case strings.Contains(s, ":"):
		return fmt.Errorf("%s is not a host: write an IPv6 address in brackets, e.g. [fd00::5]:5000", bounded.Quote(s))
	}
	if port != "" {
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 || strconv.Itoa(p) != port {
			return fmt.Errorf("%s has no valid port (1-65535)", bounded.Quote(s))
		}
	}
	if !strings.HasPrefix(s, "[") && (len(host) > 253 || !dnsName.MatchString(host)) {
		return fmt.Errorf("%s is not a host: %s", bounded.Quote(s), want)
	}
	return nil
}

// endpointEcho is an endpoint as a message may show it: without the
// password of a URL that (wrongly) carries one.
func endpointEcho(e string) string {
	if u, err := url.Parse(e); err == nil && u.User != nil {
		u.User = nil
		e = u.String()
	}
	return bounded.Quote(e)
}

// checkEndpoint checks a mirror's URL and returns it parsed.
func checkEndpoint(e string) (*url.URL, error) {
	const schemes = "write https://HOST[:PORT] (or http://… for a mirror that speaks plain HTTP, said explicitly)"
	scheme, _, ok := strings.Cut(e, "://")
	if !ok {
		return nil, errors.New("has no scheme: " + schemes)
	}
	if scheme != "https" && scheme != "http" {
		return nil, fmt.Errorf("has the scheme %s: %s", bounded.Quote(scheme), schemes)
	}
	u, err := url.Parse(e)
	if err != nil {
		return nil, errors.New("is not a URL: " + schemes)
	}
	if u.User != nil {
		return nil, fmt.Errorf("holds credentials: put them in %s.auth, never in a URL", configField(u.Host))
	}
	if u.Host == "" {
		return nil, errors.New("has no host: " + schemes)
	}
	if err := checkRegistryHost(u.Host); err != nil {
		return nil, err
	}
	if u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.ForceQuery {
		return nil, errors.New("has a query or a fragment: want scheme://host[:port][/path] only")
	}
	return u, nil
}

func validateMirror(field string, m Mirror) []string {
	var problems []string
	if len(m.Endpoints) == 0 {
		problems = append(problems, field+".endpoints: empty: list the mirrors to try, in order (e.g. [https://mirror.example.com:5000])")
	}
	seen := map[string]int{}
	for i, e := range m.Endpoints {
		if _, err := checkEndpoint(e); err != nil {
			problems = append(problems, fmt.Sprintf("%s.endpoints[%d]: %s %v", field, i, endpointEcho(e), err))
			continue
		}
		if j, dup := seen[e]; dup {
			problems = append(problems, fmt.Sprintf("%s.endpoints[%d]: %s is already endpoints[%d]", field, i, bounded.Quote(e), j))
		}
		seen[e] = i
	}
	return problems
}

func validateRegistryConfig(field string, c RegistryConfig) []string {
	var problems []string
	if c.Auth == nil && c.TLS == nil {
		problems = append(problems, field+": empty: give auth (credentials) or tls (a CA), or leave the host out")
	}
	if a := c.Auth; a != nil {
		switch {
		case a.IdentityToken != "" && (a.Username != "" || a.Password != ""):
			problems = append(problems, field+".auth: identityToken goes alone: give username and password, or identityToken")
		case a.IdentityToken == "" && (a.Username == "" || a.Password == ""):
			problems = append(problems, field+".auth: give username and password (both), or identityToken")
		}
		if strings.Contains(a.Username, ":") {
			problems = append(problems, field+".auth.username: has a colon, which basic authentication cannot carry in a username")
		}
		// Never echoed: these are secrets (the username too, which is
		// sometimes a token).
		for _, f := range []struct{ name, v string }{{"username", a.Username}, {"password", string(a.Password)}, {"identityToken", string(a.IdentityToken)}} {
			if !printable(f.v) {
				problems = append(problems, field+".auth."+f.name+": holds control characters or invalid UTF-8 (a stray newline?)")
			}
		}
	}
	if t := c.TLS; t != nil {
		switch {
		case t.CA != "" && t.CAFile != "":
			problems = append(problems, field+".tls: give ca (the PEM itself) or caFile (a file on the node), not both")
		case t.CA == "" && t.CAFile == "":
			problems = append(problems, field+".tls: give ca (the PEM itself) or caFile (a file on the node)")
		case t.CA != "":
			if err := CheckCAPEM([]byte(t.CA)); err != nil {
				problems = append(problems, field+".tls.ca: "+err.Error())
			}
		case !filepath.IsAbs(t.CAFile) || filepath.Clean(t.CAFile) != t.CAFile:
			problems = append(problems, fmt.Sprintf("%s.tls.caFile: %s is not a clean absolute path (e.g. /etc/kiln/registry-ca.pem)", field, bounded.Quote(t.CAFile)))
		}
	}
	return problems
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	return !strings.ContainsFunc(s, unicode.IsControl)
}

// CheckCAPEM checks that data is one or more PEM certificates and nothing
// else a PEM block can hold (a private key pasted along is refused, never
// passed on). Text around the blocks is ignored, as containerd does.
func CheckCAPEM(data []byte) error {
	n := 0
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("holds a %s block: give only certificates (-----BEGIN CERTIFICATE-----)", bounded.Quote(b.Type))
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("certificate %d does not parse: %v", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
	}
	return nil
}

// crossCheck refuses plain HTTP to a host that has a CA or credentials:
// containerd would try HTTPS first on such a host (HTTP is then no longer
// what the endpoint says), and credentials would cross the network in
// clear text.
func (r Registries) crossCheck() []string {
	var problems []string
	for _, k := range slices.Sorted(maps.Keys(r.Mirrors)) {
		for i, e := range r.Mirrors[k].Endpoints {
			u, err := url.Parse(e)
			if err != nil || u.Scheme != "http" {
				continue
			}
			c, ok := r.ConfigFor(u.Host)
			if !ok {
				continue
			}
			at := fmt.Sprintf("%s.endpoints[%d]: %s is plain HTTP", mirrorField(k), i, bounded.Quote(e))
			if c.TLS != nil {
				problems = append(problems, fmt.Sprintf("%s, but %s.tls gives it a CA: write https://%s", at, configField(u.Host), u.Host))
			}
			if c.Auth != nil {
				problems = append(problems, fmt.Sprintf("%s: the credentials of %s.auth would cross the network in clear text; write https://%s", at, configField(u.Host), u.Host))
			}
		}
	}
	return problems
}
