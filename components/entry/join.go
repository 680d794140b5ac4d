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
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kiln/components/approve"
	"kiln/configs/cluster"
	"kiln/pki"
)

// runJoin gets a worker's kubelet its client certificate. It trusts
// nothing it has not checked: the master's CA certificate must be in the
// chain the API server presents and hash to the pinned value; only then is
// the bootstrap token sent, over TLS verified with that CA. Then it asks
// for the certificate of system:node:NAME with a request proved by the
// node's identity key (components/approve), which the master's
// csr-approver grants only if no other machine holds the name.
//
// A worker often boots with (or before) its master, so join waits for the
// master within one run (joinWait) while the failure is one time cures:
// the master not reachable, its API server not ready, the token or the
// join RBAC not applied yet by its add-ons, the request not decided yet.
// A failure time does not cure (the CA is not the pinned one, the name is
// another machine's, a malformed token) ends the run at once. Either way
// the last line names the cause and the fix (the supervisor retries).
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
	masters := fs.String("masters", "", "the masters' API servers behind --endpoint when it is the node's API load balancer, HOST:PORT,... (named in the messages)")
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
	if err := cluster.ValidateBootstrapToken(token); err != nil {
		// Never echoed: the file holds a secret.
		return usageError("join", fmt.Errorf("bootstrap token in %s: %v", *tokenFile, err))
	}
	secret, err := pki.ReadFile(*identityFile)
	if err != nil {
		return usageError("join", fmt.Errorf("node identity: %w", err))
	}
	o := joinOptions{
		endpoint: *endpoint, caHash: *caHash, token: token, clusterName: *clusterName,
		nodeName: *nodeName, identity: approve.IdentityKey(secret),
		caOut: *caOut, kubeconfig: *kubeconfigOut, certDir: *certDir,
		out: os.Stderr,
	}
	for _, m := range strings.Split(*masters, ",") {
		if m = strings.TrimSpace(m); m != "" {
			o.masters = append(o.masters, m)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), joinPatience)
	defer cancel()
	if err := join(ctx, &o); err != nil {
		fmt.Fprintf(os.Stderr, "join: %v\n", err)
		return 1
	}
	return 0
}

// How join waits for the master. It asks every joinPoll (cheap requests:
// a TLS handshake, a token review, a CSR read, each with its own
// deadline), and says so on a line when it starts waiting, when the
// reason changes to one not seen yet in this run, and every joinReport
// while it still waits: never a line per request.
//
// A run waits at most joinPatience, then ends with the reason as its last
// line: under PID 1 a component's output goes to its log file, and the
// console shows the last line of each exit (init/up's exit report), so a
// worker that cannot join (a wrong apiEndpoint, a wrong token) still says
// why on its console every few minutes. A run that long also resets the
// supervisor's backoff, so the next one starts a second later.
//
// A token refused by a master that is otherwise ready is given
// joinTokenPatience only: the master's add-ons put the token in first, a
// few seconds after its API server is ready, so a refusal that lasts a
// minute is most likely a wrong token, which the console should show
// soon.
const (
	joinPoll           = 1500 * time.Millisecond
	joinReport         = 30 * time.Second
	joinRequestTimeout = 15 * time.Second
	joinPatience       = 2 * time.Minute
	joinTokenPatience  = time.Minute
)

// joinOptions are one join run's inputs; the timings are zero for the
// defaults above (tests make them short).
type joinOptions struct {
	endpoint, caHash, token, clusterName, nodeName string
	identity                                       ed25519.PrivateKey
	caOut, kubeconfig, certDir                     string
	out                                            io.Writer // progress lines
	// masters are the API servers behind endpoint when it is the node's
	// API load balancer (components/apilb): the messages name them, the
	// balancer's own address says little.
	masters []string

	poll, report, request, tokenPatience time.Duration
}

func (o *joinOptions) timings() (poll, report, request, tokenPatience time.Duration) {
	poll, report, request, tokenPatience = o.poll, o.report, o.request, o.tokenPatience
	if poll <= 0 {
		poll = joinPoll
	}
	if report <= 0 {
		report = joinReport
	}
	if request <= 0 {
		request = joinRequestTimeout
	}
	if tokenPatience <= 0 {
		tokenPatience = joinTokenPatience
	}
	return
}

// join runs the steps, each retried while it fails with a pending error,
// until ctx ends.
func join(ctx context.Context, o *joinOptions) error {
	tokenID, _, _ := strings.Cut(o.token, ".")
	w := newJoinWaiter(o)

	var ca *x509.Certificate
	if err := w.until(ctx, func(rctx context.Context) (err error) {
		ca, err = discoverCA(rctx, o.endpoint, o.caHash)
		return err
	}); err != nil {
		return err
	}
	caPEM := pki.EncodeCertPEM(ca)
	hc := caClient(ca)
	defer hc.CloseIdleConnections()
	if err := w.until(ctx, func(rctx context.Context) error { return checkToken(rctx, hc, o.endpoint, o.token) }); err != nil {
		return err
	}
	if err := pki.WriteFile(o.caOut, caPEM, false); err != nil {
		return err
	}
	user := "system:node:" + o.nodeName
	pair := filepath.Join(o.certDir, pki.CurrentPair("kubelet-client"))
	if until, ok := validKubeletCert(pair, ca, user); ok {
		// The node's kubeconfig is written again at every join: it
		// follows this boot's endpoint (a worker of an older kiln reached
		// the master directly, now through its API load balancer) and
		// names the kubelet's current pair (an older kiln embedded the
		// certificate it joined with, which the kubelet's rotation then
		// left behind for kube-proxy and the pod network).
		if err := writeNodeKubeconfig(o, caPEM, user, pair); err != nil {
			return err
		}
		w.done()
		fmt.Fprintf(o.out, "join: master %s verified (CA %s), bootstrap token %s accepted; the kubelet's certificate of an earlier boot is valid until %s\n",
			o.endpoint, o.caHash, tokenID, until.UTC().Format(time.RFC3339))
		return nil
	}
	certPEM, keyPEM, csrName, err := requestNodeCert(ctx, w, o.endpoint, caPEM, o.token, o.nodeName, o.identity)
	if err != nil {
		return err
	}
	// Where and how the kubelet keeps the client certificates it rotates
	// (a symlink to the newest), so it rotates this one too.
	if pair, err = pki.WriteRotatedPair(o.certDir, "kubelet-client", append(certPEM, keyPEM...)); err != nil {
		return err
	}
	if err := writeNodeKubeconfig(o, caPEM, user, pair); err != nil {
		return err
	}
	w.done()
	fmt.Fprintf(o.out, "join: master %s verified (CA %s), bootstrap token %s accepted, node name %s granted (%s)\n", o.endpoint, o.caHash, tokenID, o.nodeName, csrName)
	return nil
}

// writeNodeKubeconfig writes the node's kubeconfig (the kubelet's, which
// kube-proxy, the pod network, the network policies and the API load
// balancer use too) naming the kubelet's current client certificate
// file, pair: the kubelet rotates it, and each of them reads it again at
// its next handshake.
func writeNodeKubeconfig(o *joinOptions, caPEM []byte, user, pair string) error {
	kc := pki.Kubeconfig{ClusterName: o.clusterName, Server: o.endpoint, UserName: user, CAPEM: caPEM, CertFile: pair, KeyFile: pair}
	data, err := kc.Marshal()
	if err == nil {
		err = pki.WriteFile(o.kubeconfig, data, true)
	}
	if err != nil {
		return fmt.Errorf("writing the node's kubeconfig %s: %w", o.kubeconfig, err)
	}
	return nil
}

// pendingErr is a failure time cures: join waits and asks again. kind
// groups the reasons (a new kind gets its line at once); reason is what
// the waiting lines say; err is the whole message, the run's last line if
// the master does not come round in time.
type pendingErr struct {
	kind, reason string
	err          error
	cause        error // of a waitReachable: what the connection failed with
}

func (p *pendingErr) Error() string { return p.err.Error() }
func (p *pendingErr) Unwrap() error { return p.err }

// The kinds of pending failure.
const (
	waitReachable = "reachable"     // no TCP/TLS connection to the API server
	waitReady     = "ready"         // the API server answers but is not ready
	waitToken     = "token"         // the token is refused (401)
	waitRBAC      = "join RBAC"     // the token may not ask for a certificate (403)
	waitDecision  = "csr decision"  // the request is not decided yet
	waitSigned    = "csr signature" // approved, the certificate not issued yet
)

// joinWaiter retries a step and prints the waiting lines.
type joinWaiter struct {
	o                                    *joinOptions
	where                                string // "the master at HOST", or the masters through the balancer
	lbHost                               string // the balancer's HOST:PORT, when there are masters behind it
	poll, report, request, tokenPatience time.Duration
	started, lastLine                    time.Time // zero until the first wait
	seen                                 map[string]bool
	kind                                 string    // of the last pending failure
	kindSince                            time.Time // since when in a row
}

func newJoinWaiter(o *joinOptions) *joinWaiter {
	host := o.endpoint
	if u, err := url.Parse(o.endpoint); err == nil && u.Host != "" {
		host = u.Host
	}
	w := &joinWaiter{o: o, where: "the master at " + host, seen: map[string]bool{}}
	if len(o.masters) > 0 {
		w.lbHost = host
		w.where = fmt.Sprintf("the masters (%s) through the node's API load balancer at %s", strings.Join(o.masters, ", "), host)
	}
	w.poll, w.report, w.request, w.tokenPatience = o.timings()
	return w
}

// until runs step, each time with its own deadline, until it returns nil
// or an error that is not pending, or ctx ends (then the last pending
// reason is the error).
func (w *joinWaiter) until(ctx context.Context, step func(context.Context) error) error {
	var last *pendingErr
	for {
		rctx, cancel := context.WithTimeout(ctx, w.request)
		err := step(rctx)
		cancel()
		var p *pendingErr
		if !errors.As(err, &p) {
			return err
		}
		if p.kind == waitReachable && w.lbHost != "" && p.cause != nil {
			p = w.unreachableVia(p)
		}
		// A request cut by the run's own deadline says less than the
		// reason seen before it.
		if ctx.Err() != nil && last != nil {
			return w.gaveUp(last)
		}
		last = p
		w.note(p)
		if p.kind == waitToken && time.Since(w.kindSince) >= w.tokenPatience {
			return w.gaveUp(p)
		}
		select {
		case <-ctx.Done():
			return w.gaveUp(last)
		case <-time.After(w.poll):
		}
	}
}

// note prints a waiting line for p if it is the first, if its kind is new
// in this run, or if the last line is older than the report interval.
func (w *joinWaiter) note(p *pendingErr) {
	now := time.Now()
	if p.kind != w.kind {
		w.kind, w.kindSince = p.kind, now
	}
	switch {
	case w.started.IsZero():
		w.started = now
		fmt.Fprintf(w.o.out, "join: waiting for %s: %s\n", w.where, p.reason)
	case !w.seen[p.kind] || now.Sub(w.lastLine) >= w.report:
		fmt.Fprintf(w.o.out, "join: waiting for %s: %s (%s)\n", w.where, p.reason, w.waited(now))
	default:
		return
	}
	w.seen[p.kind] = true
	w.lastLine = now
}

func (w *joinWaiter) waited(now time.Time) time.Duration {
	return now.Sub(w.started).Round(time.Second)
}

// gaveUp is the run's error when the run ends while p still holds (its
// time is up, or the token's patience).
func (w *joinWaiter) gaveUp(p *pendingErr) error {
	waited := time.Duration(0)
	if !w.started.IsZero() {
		waited = w.waited(time.Now())
	}
	return fmt.Errorf("%w (still so after waiting %s for the master; join starts again)", p.err, waited)
}

// done prints how long join waited, if it did.
func (w *joinWaiter) done() {
	if !w.started.IsZero() {
		fmt.Fprintf(w.o.out, "join: %s answered after %s of waiting\n", w.where, w.waited(time.Now()))
	}
}

func unreachable(host string, err error) *pendingErr {
	return &pendingErr{kind: waitReachable, reason: "not reachable: " + err.Error(), cause: err,
		err: fmt.Errorf("cannot reach the master at %s: %v (is the master up, and is apiEndpoint right?)", host, err)}
}

// unreachableVia is unreachable when the endpoint is the node's API load
// balancer: it took the connection and closed it (an EOF) when no master
// answered, so the fix is with the masters or the balancer's seeds.
func (w *joinWaiter) unreachableVia(p *pendingErr) *pendingErr {
	return &pendingErr{kind: p.kind, reason: p.reason, cause: p.cause,
		err: fmt.Errorf("cannot reach a master through the node's API load balancer at %s (masters %s): %v (are the masters up, and are controlPlane.masters or apiEndpoint right? kiln-node logs api-lb says which it tried)",
			w.lbHost, strings.Join(w.o.masters, ", "), p.cause)}
}

func notReady(endpoint, why string) *pendingErr {
	return &pendingErr{kind: waitReady, reason: "its API server is not ready yet (" + why + ")",
		err: fmt.Errorf("master %s: its API server is not ready: %s", endpoint, why)}
}

// tokenRefused: a 401 for a token that is well formed. The master's
// add-ons create the token's Secret once its API serves, so a worker
// faster than its master is refused for a while; a wrong, expired or
// deleted token is refused for ever, and only time tells the two apart.
// (checkToken first asks /readyz, so a master not ready yet is not taken
// for a refusal.) Either is waited for, for joinTokenPatience; the
// refusal is on the first line of its kind, on each line every
// joinReport, and, if it lasts, on the run's last line (what the console
// shows: "refused bootstrap token ID" is what the VM tests look for).
func tokenRefused(token string) *pendingErr {
	id, _, _ := strings.Cut(token, ".")
	return &pendingErr{kind: waitToken,
		reason: fmt.Sprintf("it refused bootstrap token %s.<secret> (401 Unauthorized): its add-ons have not created it yet, or it is wrong, expired or deleted", id),
		err:    fmt.Errorf("the master refused bootstrap token %s.<secret> (401 Unauthorized): it is wrong, expired or deleted. Build the worker image from the master's cluster directory (its secrets/bootstrap-token)", id)}
}

// caClient speaks TLS verified with the cluster CA; its connections are
// kept between polls, so a poll is one request, not a handshake.
func caClient(ca *x509.Certificate) *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, TLSHandshakeTimeout: 10 * time.Second}}
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

// requestNodeCert asks the cluster for the client certificate of
// system:node:NAME with the bootstrap token, the request proved by the
// node's identity key, and waits (w) for the decision.
func requestNodeCert(ctx context.Context, w *joinWaiter, endpoint string, caPEM []byte, token, name string, identity ed25519.PrivateKey) (certPEM, keyPEM []byte, csrName string, err error) {
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
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: endpoint, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: caPEM}, Timeout: w.request})
	if err != nil {
		return nil, nil, "", err
	}
	csrs := cs.CertificatesV1().CertificateSigningRequests()
	var csr *certificatesv1.CertificateSigningRequest
	if err := w.until(ctx, func(rctx context.Context) (err error) {
		csr, err = csrs.Create(rctx, &certificatesv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "kiln-join-" + name + "-", Annotations: approve.Prove(identity, reqPEM)},
			Spec: certificatesv1.CertificateSigningRequestSpec{
				Request:    reqPEM,
				SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName,
				Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return apiFailure(endpoint, token, fmt.Sprintf("asking for node %s's certificate", name), err)
		}
		return nil
	}); err != nil {
		return nil, nil, "", err
	}
	var cert []byte
	err = w.until(ctx, func(rctx context.Context) error {
		got, err := csrs.Get(rctx, csr.Name, metav1.GetOptions{})
		if err != nil {
			return apiFailure(endpoint, token, "reading request "+csr.Name, err)
		}
		approved := false
		for _, c := range got.Status.Conditions {
			switch c.Type {
			case certificatesv1.CertificateDenied, certificatesv1.CertificateFailed:
				return fmt.Errorf("the cluster refused node name %s: %s", name, c.Message)
			case certificatesv1.CertificateApproved:
				approved = true
			}
		}
		if len(got.Status.Certificate) > 0 {
			cert = got.Status.Certificate
			return nil
		}
		if approved {
			return &pendingErr{kind: waitSigned, reason: fmt.Sprintf("request %s approved, its certificate not issued yet (by kube-controller-manager)", csr.Name),
				err: fmt.Errorf("request %s for node name %s is approved but the master has not issued its certificate (is its kube-controller-manager running?)", csr.Name, name)}
		}
		return &pendingErr{kind: waitDecision, reason: fmt.Sprintf("request %s for node name %s not decided yet", csr.Name, name),
			err: fmt.Errorf("the master did not decide request %s for node name %s (is its csr-approver running? kubectl get csr %s)", csr.Name, name, csr.Name)}
	})
	if err != nil {
		return nil, nil, csr.Name, err
	}
	keyPEM, err = pki.KeyPEM(key)
	return cert, keyPEM, csr.Name, err
}

// apiFailure sorts an API call's error: no answer, a refused token (401),
// a token not allowed yet (403: the join RBAC comes with the add-ons) and
// an API server not ready (429, 5xx) are pending; anything else is not.
func apiFailure(endpoint, token, doing string, err error) error {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		host := endpoint
		if u, perr := url.Parse(endpoint); perr == nil && u.Host != "" {
			host = u.Host
		}
		return unreachable(host, err)
	}
	code := int(st.Status().Code)
	switch {
	case code == http.StatusUnauthorized:
		return tokenRefused(token)
	case code == http.StatusForbidden:
		id, _, _ := strings.Cut(token, ".")
		return &pendingErr{kind: waitRBAC,
			reason: fmt.Sprintf("it does not let bootstrap token %s ask for a certificate yet (403 Forbidden: its add-ons apply the join RBAC)", id),
			err:    fmt.Errorf("%s: %v (the master's add-ons bind system:bootstrappers to system:node-bootstrapper: are they applied? kiln-node logs addons on the master)", doing, err)}
	case code == http.StatusTooManyRequests || code >= 500:
		return notReady(endpoint, fmt.Sprintf("%s: %d %s", doing, code, http.StatusText(code)))
	}
	return fmt.Errorf("%s: %v", doing, err)
}

// discoverCA connects to the API server and returns the CA certificate from
// the chain it presents (kiln's API server sends its CA after its serving
// certificate), after checking its hash against the pin and that it signed
// the serving certificate for this host. No connection is pending; a CA
// that is not the pinned one is not.
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
		return nil, unreachable(u.Host, err)
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

// checkToken asks the master who the token is (a SelfSubjectReview). A
// 401 means the token is not known to the master: pending, as long as the
// master's API server says it is ready (before, it may not have read the
// tokens yet); a 429 or 5xx means not ready yet.
func checkToken(ctx context.Context, c *http.Client, endpoint string, token string) error {
	base := strings.TrimSuffix(endpoint, "/")
	host := base
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		host = u.Host
	}
	body := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/apis/authentication.k8s.io/v1/selfsubjectreviews", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return unreachable(host, err)
	}
	defer resp.Body.Close()
	id, _, _ := strings.Cut(token, ".")
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		if why := readyz(ctx, c, base); why != "" {
			return notReady(endpoint, why)
		}
		return tokenRefused(token)
	case resp.StatusCode == http.StatusForbidden:
		return nil // authenticated; only not allowed to ask who it is
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return notReady(endpoint, "checking the bootstrap token: "+resp.Status)
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
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&r); err != nil {
		return fmt.Errorf("master %s: reading the token review: %v", endpoint, err)
	}
	if want := "system:bootstrap:" + id; r.Status.UserInfo.Username != want {
		return errors.New("the master took the bootstrap token as " + r.Status.UserInfo.Username + ", not " + want)
	}
	return nil
}

// readyz asks the API server's /readyz anonymously (kiln's API server
// allows that on its health paths only): "" when it answers ok, else why
// not.
func readyz(ctx context.Context, c *http.Client, base string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := c.Do(req)
	if err != nil {
		return "readyz: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode == http.StatusOK && strings.TrimSpace(string(b)) == "ok" {
		return ""
	}
	return "readyz: " + resp.Status
}
