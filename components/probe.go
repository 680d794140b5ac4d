package components

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// probeHTTPS GETs url and wants 200 with a body containing want (if set).
func probeHTTPS(ctx context.Context, url string, tlsConfig *tls.Config, want string) error {
	body, err := askHTTPS(ctx, http.MethodGet, url, "", tlsConfig)
	if err != nil {
		return err
	}
	if want != "" && !strings.Contains(string(body), want) {
		return fmt.Errorf("%s: unexpected answer %q", url, strings.TrimSpace(string(body)))
	}
	return nil
}

// askHTTPS sends a probe's request (a JSON body, if any) on a connection
// of its own and returns the first 4 KiB of a 200 answer; any other
// status is an error with what the server said.
func askHTTPS(ctx context.Context, method, url, body string, tlsConfig *tls.Config) ([]byte, error) {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(answer)))
	}
	return answer, nil
}

// caPool trusts one CA certificate (PEM).
func caPool(caPEM []byte) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return pool
}
