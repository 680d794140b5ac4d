package entry

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"kiln/pki"
)

// runJoin prepares a worker's kubelet for TLS bootstrap. It trusts nothing
// it has not checked: the master's CA certificate must be in the chain the
// API server presents and hash to the pinned value; only then is the
// bootstrap token sent, over TLS verified with that CA. Every failure is
// one line naming the cause and the fix (the supervisor retries).
func runJoin(args []string) int {
	fs := flag.NewFlagSet("join", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "API server, https://HOST:PORT")
	caHash := fs.String("ca-hash", "", "pinned hash of the cluster CA (sha256:...)")
	tokenFile := fs.String("token-file", "", "file holding the bootstrap token")
	clusterName := fs.String("cluster-name", "kiln", "cluster name in the kubeconfig")
	caOut := fs.String("ca-out", "", "where to write the CA certificate")
	kubeconfigOut := fs.String("bootstrap-kubeconfig", "", "where to write the kubelet's bootstrap kubeconfig")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for name, v := range map[string]string{"endpoint": *endpoint, "ca-hash": *caHash, "token-file": *tokenFile, "ca-out": *caOut, "bootstrap-kubeconfig": *kubeconfigOut} {
		if v == "" {
			return usageError("join", fmt.Errorf("--%s is required", name))
		}
	}
	tokenBytes, err := os.ReadFile(*tokenFile)
	if err != nil {
		return usageError("join", fmt.Errorf("bootstrap token: %w", err))
	}
	token := strings.TrimSpace(string(tokenBytes))
	tokenID, _, _ := strings.Cut(token, ".")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca, err := discoverCA(ctx, *endpoint, *caHash)
	if err != nil {
		fmt.Fprintf(os.Stderr, "join: %v\n", err)
		return 1
	}
	caPEM := pki.EncodeCertPEM(ca)
	if err := checkToken(ctx, *endpoint, ca, token); err != nil {
		fmt.Fprintf(os.Stderr, "join: %v\n", err)
		return 1
	}
	if err := pki.WriteFile(*caOut, caPEM, false); err != nil {
		fmt.Fprintf(os.Stderr, "join: %v\n", err)
		return 1
	}
	kc := pki.Kubeconfig{
		ClusterName: *clusterName,
		Server:      *endpoint,
		UserName:    "kubelet-bootstrap",
		CAPEM:       caPEM,
		Token:       token,
	}
	data, err := kc.Marshal()
	if err == nil {
		err = pki.WriteFile(*kubeconfigOut, data, true)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "join: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "join: master %s verified (CA %s), bootstrap token %s accepted\n", *endpoint, *caHash, tokenID)
	return 0
}

// discoverCA connects to the API server and returns the CA certificate from
// the chain it presents (kiln's API server sends its CA after its serving
// certificate), after checking its hash against the pin and that it signed
// the serving certificate for this host.
func discoverCA(ctx context.Context, endpoint, pin string) (*x509.Certificate, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("endpoint %q is not https://HOST:PORT", endpoint)
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{
		// Verified below against the pinned CA, by hand, before anything is sent.
		InsecureSkipVerify: true,
	}}
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the master at %s: %v (is the master up, and is apiEndpoint right?)", u.Host, err)
	}
	chain := conn.(*tls.Conn).ConnectionState().PeerCertificates
	conn.Close()
	if len(chain) == 0 {
		return nil, fmt.Errorf("master %s presented no certificate", u.Host)
	}
	var seen []string
	for _, c := range chain[1:] {
		h := pki.CAHash(c)
		if h != pin {
			seen = append(seen, fmt.Sprintf("%s (%s)", h, c.Subject.CommonName))
			continue
		}
		roots := x509.NewCertPool()
		roots.AddCert(c)
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: u.Hostname()}); err != nil {
			return nil, fmt.Errorf("master %s: its certificate does not verify with the pinned CA: %v", u.Host, err)
		}
		return c, nil
	}
	if len(seen) == 0 {
		seen = append(seen, fmt.Sprintf("none (its certificate is issued by %q)", chain[0].Issuer.CommonName))
	}
	return nil, fmt.Errorf("master %s does not present the pinned cluster CA %s; it presents %s. This worker's image was built from another cluster directory: rebuild it with the master's (make image ROLE=worker CLUSTER=...)",
		u.Host, pin, strings.Join(seen, ", "))
}

// checkToken asks the master who the token is (a SelfSubjectReview): a 401
// means the token is wrong, expired or deleted.
func checkToken(ctx context.Context, endpoint string, ca *x509.Certificate, token string) error {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	body := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(endpoint, "/")+"/apis/authentication.k8s.io/v1/selfsubjectreviews", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("master %s: %v", endpoint, err)
	}
	defer resp.Body.Close()
	id, _, _ := strings.Cut(token, ".")
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("the master refused bootstrap token %s.<secret> (401 Unauthorized): it is wrong, expired or deleted. Build the worker image from the master's cluster directory (its secrets/bootstrap-token)", id)
	case resp.StatusCode == http.StatusForbidden:
		return nil // authenticated; only not allowed to ask who it is
	case resp.StatusCode >= 300:
		return fmt.Errorf("master %s: checking the bootstrap token: %s", endpoint, resp.Status)
	}
	var r struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("master %s: reading the token review: %v", endpoint, err)
	}
	if want := "system:bootstrap:" + id; r.Status.UserInfo.Username != want {
		return errors.New("the master took the bootstrap token as " + r.Status.UserInfo.Username + ", not " + want)
	}
	return nil
}
