package entry

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kiln/components/approve"
	"kiln/pki"
)

// runJoin gets a worker's kubelet its client certificate. It trusts
// nothing it has not checked: the master's CA certificate must be in the
// chain the API server presents and hash to the pinned value; only then is
// the bootstrap token sent, over TLS verified with that CA. Then it asks
// for the certificate of system:node:NAME with a request proved by the
// node's identity key (components/approve), which the master's
// csr-approver grants only if no other machine holds the name. Every
// failure is one line naming the cause and the fix (the supervisor
// retries).
func runJoin(args []string) int {
	fs := flag.NewFlagSet("join", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "API server, https://HOST:PORT")
	caHash := fs.String("ca-hash", "", "pinned hash of the cluster CA (sha256:...)")
	tokenFile := fs.String("token-file", "", "file holding the bootstrap token")
	clusterName := fs.String("cluster-name", "kiln", "cluster name in the kubeconfig")
	caOut := fs.String("ca-out", "", "where to write the CA certificate")
	nodeName := fs.String("node-name", "", "the node's name")
	identityFile := fs.String("identity-file", "", "file holding the node's secret, from which its identity key is derived")
	kubeconfigOut := fs.String("kubeconfig", "", "where to write the kubelet's kubeconfig")
	certDir := fs.String("cert-dir", "", "the kubelet's certificate directory (a valid certificate there is kept)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for name, v := range map[string]string{"endpoint": *endpoint, "ca-hash": *caHash, "token-file": *tokenFile, "ca-out": *caOut,
		"node-name": *nodeName, "identity-file": *identityFile, "kubeconfig": *kubeconfigOut, "cert-dir": *certDir} {
		if v == "" {
			return usageError("join", fmt.Errorf("--%s is required", name))
		}
	}
	tokenBytes, err := pki.ReadFile(*tokenFile)
	if err != nil {
		return usageError("join", fmt.Errorf("bootstrap token: %w", err))
	}
	token := strings.TrimSpace(string(tokenBytes))
	tokenID, _, _ := strings.Cut(token, ".")
	secret, err := pki.ReadFile(*identityFile)
	if err != nil {
		return usageError("join", fmt.Errorf("node identity: %w", err))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "join: %v\n", err)
		return 1
	}
	ca, err := discoverCA(ctx, *endpoint, *caHash)
	if err != nil {
		return fail(err)
	}
	caPEM := pki.EncodeCertPEM(ca)
	if err := checkToken(ctx, *endpoint, ca, token); err != nil {
		return fail(err)
	}
	if err := pki.WriteFile(*caOut, caPEM, false); err != nil {
		return fail(err)
	}
	user := "system:node:" + *nodeName
	if until, ok := validKubeletCert(filepath.Join(*certDir, "kubelet-client-current.pem"), ca, user); ok {
		if _, err := os.Stat(*kubeconfigOut); err == nil {
			fmt.Fprintf(os.Stderr, "join: master %s verified (CA %s), bootstrap token %s accepted; the kubelet's certificate of an earlier boot is valid until %s\n",
				*endpoint, *caHash, tokenID, until.UTC().Format(time.RFC3339))
			return 0
		}
	}
	certPEM, keyPEM, csrName, err := requestNodeCert(ctx, *endpoint, caPEM, token, *nodeName, approve.IdentityKey(secret))
	if err != nil {
		return fail(err)
	}
	kc := pki.Kubeconfig{ClusterName: *clusterName, Server: *endpoint, UserName: user, CAPEM: caPEM, CertPEM: certPEM, KeyPEM: keyPEM}
	data, err := kc.Marshal()
	if err == nil {
		err = pki.WriteFile(*kubeconfigOut, data, true)
	}
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(os.Stderr, "join: master %s verified (CA %s), bootstrap token %s accepted, node name %s granted (%s)\n", *endpoint, *caHash, tokenID, *nodeName, csrName)
	return 0
}

// validKubeletCert reports whether the kubelet's current client
// certificate (certificate and key in one PEM file, as the kubelet keeps
// it) is the node's, signed by ca, and good for at least another hour.
func validKubeletCert(path string, ca *x509.Certificate, user string) (time.Time, bool) {
	data, err := pki.ReadFile(path)
	if err != nil {
		return time.Time{}, false
	}
	cert, err := pki.ParseCertPEM(data)
	if err != nil || cert.Subject.CommonName != user || time.Until(cert.NotAfter) < time.Hour {
		return time.Time{}, false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return time.Time{}, false
	}
	return cert.NotAfter, true
}

// joinDecisionTimeout is how long join waits for the master to decide its
// request before it gives up (and the supervisor retries).
const joinDecisionTimeout = 90 * time.Second

// requestNodeCert asks the cluster for the client certificate of
// system:node:NAME with the bootstrap token, the request proved by the
// node's identity key, and waits for the decision.
func requestNodeCert(ctx context.Context, endpoint string, caPEM []byte, token, name string, identity ed25519.PrivateKey) (certPEM, keyPEM []byte, csrName string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}}}, key)
	if err != nil {
		return nil, nil, "", err
	}
	reqPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: endpoint, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: caPEM}, Timeout: 30 * time.Second})
	if err != nil {
		return nil, nil, "", err
	}
	csrs := cs.CertificatesV1().CertificateSigningRequests()
	csr, err := csrs.Create(ctx, &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "kiln-join-" + name + "-", Annotations: approve.Prove(identity, reqPEM)},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    reqPEM,
			SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName,
			Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, nil, "", fmt.Errorf("asking for node %s's certificate: %v", name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, joinDecisionTimeout)
	defer cancel()
	for {
		got, err := csrs.Get(wctx, csr.Name, metav1.GetOptions{})
		if err == nil {
			for _, c := range got.Status.Conditions {
				if c.Type == certificatesv1.CertificateDenied || c.Type == certificatesv1.CertificateFailed {
					return nil, nil, csr.Name, fmt.Errorf("the cluster refused node name %s: %s", name, c.Message)
				}
			}
			if len(got.Status.Certificate) > 0 {
				keyPEM, err := pki.KeyPEM(key)
				return got.Status.Certificate, keyPEM, csr.Name, err
			}
		}
		select {
		case <-wctx.Done():
			return nil, nil, csr.Name, fmt.Errorf("the master did not decide request %s for node name %s within %s (is its csr-approver running? kubectl get csr %s)", csr.Name, name, joinDecisionTimeout, csr.Name)
		case <-time.After(time.Second):
		}
	}
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
