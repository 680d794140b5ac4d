// Package registry runs a real OCI registry for tests:
// go-containerregistry's pkg/registry on a loopback port, optionally over
// HTTPS with a CA made for it and behind basic authentication, as a
// private registry is. Images are built from Go (Image) and pushed with
// go-containerregistry's remote package.
//
// Network safety: it listens on 127.0.0.1 only. A VM reaches it through
// a QEMU forward (qemu.GuestForward), never over a real network.
package registry

import (
	"bytes"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"kiln/images/oci"
	"kiln/pki"
)

// Options say what kind of registry to run.
type Options struct {
	// TLS serves HTTPS, with a certificate for 127.0.0.1, localhost and
	// Names signed by a CA made for this registry (Registry.CAPEM).
	TLS bool
	// Names are more host names and IP addresses the certificate is
	// for: how a VM reaches the registry through a forward (10.0.2.100).
	Names []string
	// Username and Password, when Username is set, are wanted with
	// every request (HTTP basic authentication); a request without them,
	// or with others, is answered 401 as a registry does.
	Username, Password string
}

// Registry is a running registry.
type Registry struct {
	// Addr is where it listens: 127.0.0.1:PORT.
	Addr string
	// CAPEM is the CA of its certificate (TLS only): what a client
	// trusts it with.
	CAPEM []byte

	opts Options
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []string
}

// Start runs a registry until the test ends.
func Start(t testing.TB, o Options) *Registry {
	t.Helper()
	r := &Registry{opts: o}
	// Each request is recorded, not logged: the test asks what it needs
	// (Requests), and the output stays free of registry chatter.
	h := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewUnstartedServer(r.handler(h))
	if o.TLS {
		cert, caPEM, err := serverCert(o.Names)
		if err != nil {
			t.Fatal(err)
		}
		r.CAPEM = caPEM
		r.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		r.srv.StartTLS()
	} else {
		r.srv.Start()
	}
	r.Addr = r.srv.Listener.Addr().String()
	t.Cleanup(r.srv.Close)
	return r
}

// serverCert makes a CA and a server certificate of it for loopback and
// names.
func serverCert(names []string) (tls.Certificate, []byte, error) {
	ca, err := pki.NewCA("kiln test registry CA", 24*time.Hour)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	req := pki.CertRequest{CommonName: "kiln test registry", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			req.IPs = append(req.IPs, ip)
		} else {
			req.DNSNames = append(req.DNSNames, n)
		}
	}
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	return cert, ca.CertPEM, err
}

// handler records each request and, with a username, wants basic
// authentication first, as docker's registry does with htpasswd.
func (r *Registry) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			r.mu.Lock()
			r.reqs = append(r.reqs, fmt.Sprintf("%s %s %d", req.Method, req.URL.Path, rec.status))
			r.mu.Unlock()
		}()
		if r.opts.Username != "" {
			u, p, ok := req.BasicAuth()
			// Both compared in constant time, and both always: a test
			// registry, but no reason to teach timing leaks.
			uok := subtle.ConstantTimeCompare([]byte(u), []byte(r.opts.Username)) == 1
			pok := subtle.ConstantTimeCompare([]byte(p), []byte(r.opts.Password)) == 1
			if !ok || !uok || !pok {
				rec.Header().Set("WWW-Authenticate", `Basic realm="kiln test registry"`)
				rec.Header().Set("Content-Type", "application/json")
				rec.WriteHeader(http.StatusUnauthorized)
				io.WriteString(rec, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}`+"\n")
				return
			}
		}
		next.ServeHTTP(rec, req)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Requests are the requests served so far, one "METHOD PATH STATUS" each
// (e.g. "GET /v2/kiln/echo/manifests/v1 200"), oldest first.
func (r *Registry) Requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reqs...)
}

// Served counts the requests whose "METHOD PATH STATUS" line holds all of
// the substrings.
func (r *Registry) Served(substrings ...string) int {
	n := 0
	for _, l := range r.Requests() {
		all := true
		for _, s := range substrings {
			all = all && strings.Contains(l, s)
		}
		if all {
			n++
		}
	}
	return n
}

// URL is the registry's base URL: https://127.0.0.1:PORT (http:// without
// TLS).
func (r *Registry) URL() string {
	if r.opts.TLS {
		return "https://" + r.Addr
	}
	return "http://" + r.Addr
}

// Ref is an image reference in this registry: Addr/repoTag.
func (r *Registry) Ref(repoTag string) string { return r.Addr + "/" + repoTag }

// Transport trusts the registry's CA (and nothing else), or is plain
// HTTP's without TLS.
func (r *Registry) Transport() http.RoundTripper {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // loopback only, whatever the environment says
	if r.opts.TLS {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(r.CAPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return tr
}

// Options are go-containerregistry's remote options to talk to the
// registry with auth (authn.Anonymous for none, r.Auth() for the right
// credentials).
func (r *Registry) Options(auth authn.Authenticator) []remote.Option {
	return []remote.Option{remote.WithTransport(r.Transport()), remote.WithAuth(auth)}
}

// Auth are the registry's own credentials (anonymous without a
// username).
func (r *Registry) Auth() authn.Authenticator {
	if r.opts.Username == "" {
		return authn.Anonymous
	}
	return &authn.Basic{Username: r.opts.Username, Password: r.opts.Password}
}

// Push uploads img as repoTag (e.g. "kiln/echo:v1") with the registry's
// credentials and returns its manifest digest.
func (r *Registry) Push(repoTag string, img v1.Image) (v1.Hash, error) {
	ref, err := name.ParseReference(r.Ref(repoTag), name.StrictValidation)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.Write(ref, img, r.Options(r.Auth())...); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return img.Digest()
}

// Image builds im from the program at binPath exactly as kiln builds the
// images it bakes into a node (images/oci: the program in usr/bin, its
// entrypoint and command), then adds labels to its config: the same
// program under labels no baked image has makes an image of its own
// digest, so a test can tell a pulled image from a baked one.
func Image(im oci.Image, binPath string, labels map[string]string) (v1.Image, error) {
	var buf bytes.Buffer
	if err := im.Write(binPath, &buf); err != nil {
		return nil, err
	}
	img, err := tarball.Image(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil }, nil)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", im.Ref, err)
	}
	if len(labels) == 0 {
		return img, nil
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg := cf.Config.DeepCopy()
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	for k, v := range labels {
		cfg.Labels[k] = v
	}
	return mutate.Config(img, *cfg)
}
