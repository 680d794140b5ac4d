package registry

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"kiln/images/oci"
)

// Push an image built as kiln builds its own, then read its manifest and
// config back with go-containerregistry's client: over HTTP, over HTTPS
// with the registry's CA, and behind basic authentication, where no
// credentials or wrong ones get 401. The "program" is a few bytes: the
// registry stores and serves it, nothing runs it.
func TestPushPull(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "hello")
	if err := os.WriteFile(bin, []byte("not really a program\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	im := oci.Image{Ref: "kiln.test/hello:v1", Binary: "hello", Cmd: []string{"serve"}}
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"plain HTTP", Options{}},
		{"TLS", Options{TLS: true, Names: []string{"10.0.2.100", "registry.kiln.test"}}},
		{"TLS and basic auth", Options{TLS: true, Username: "kiln", Password: "s3cret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Start(t, tc.o)
			if !strings.HasPrefix(r.Addr, "127.0.0.1:") {
				t.Fatalf("listens on %s, want loopback", r.Addr)
			}
			img, err := Image(im, bin, map[string]string{"kiln.test/case": tc.name})
			if err != nil {
				t.Fatal(err)
			}
			digest, err := r.Push("kiln/hello:v1", img)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := name.ParseReference(r.Ref("kiln/hello:v1"))
			if err != nil {
				t.Fatal(err)
			}
			// The manifest back, with the registry's credentials.
			desc, err := remote.Get(ref, r.Options(r.Auth())...)
			if err != nil {
				t.Fatal(err)
			}
			if desc.Digest != digest {
				t.Errorf("pulled %s, pushed %s", desc.Digest, digest)
			}
			got, err := desc.Image()
			if err != nil {
				t.Fatal(err)
			}
			cf, err := got.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.Config.Labels["kiln.test/case"] != tc.name || strings.Join(cf.Config.Entrypoint, " ") != "/usr/bin/hello" || strings.Join(cf.Config.Cmd, " ") != "serve" || cf.Architecture != "amd64" {
				t.Errorf("config: %+v", cf.Config)
			}
			if r.Served("GET /v2/kiln/hello/manifests/v1 200") != 1 {
				t.Errorf("requests: %v", r.Requests())
			}
			if tc.o.Username == "" {
				return
			}
			// Without credentials, and with wrong ones: 401, as a private
			// registry answers.
			for _, auth := range []authn.Authenticator{authn.Anonymous, &authn.Basic{Username: "kiln", Password: "wrong"}, &authn.Basic{Username: "other", Password: "s3cret"}} {
				_, err := remote.Get(ref, r.Options(auth)...)
				var te *transport.Error
				if !errors.As(err, &te) || te.StatusCode != http.StatusUnauthorized {
					t.Errorf("credentials %T: want 401, got %v", auth, err)
				}
			}
			if r.Served("401") == 0 {
				t.Errorf("no 401 recorded: %v", r.Requests())
			}
		})
	}
}

// Without the registry's CA, its certificate is refused: the CA is its
// own, not one the host trusts.
func TestTLSNeedsTheCA(t *testing.T) {
	r := Start(t, Options{TLS: true})
	resp, err := http.Get(r.URL() + "/v2/")
	if err == nil {
		resp.Body.Close()
		t.Fatal("the registry's certificate was trusted without its CA")
	}
	resp, err = (&http.Client{Transport: r.Transport()}).Get(r.URL() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/v2/ with the CA: %s", resp.Status)
	}
}
