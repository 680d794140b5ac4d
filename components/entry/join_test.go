package entry

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"

	"kiln/internal/testutil"
	"kiln/pki"
)

const testToken = "abcdef.0123456789abcdef"

// serveTLS serves h over TLS on 127.0.0.1 with a leaf issued by ca for
// localhost and 127.0.0.1, the CA appended to the chain as kiln's API
// server does. ln, if not nil, is the listener to serve on.
func serveTLS(t *testing.T, ca *pki.CA, h http.Handler, ln net.Listener) *httptest.Server {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(pki.CertRequest{CommonName: "kube-apiserver", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(append(certPEM, ca.CertPEM...), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	if ln != nil {
		srv.Listener.Close()
		srv.Listener = ln
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// apiServer answers SelfSubjectReviews for testToken only, and /readyz
// anonymously, as kiln's API server does.
func apiServer(t *testing.T, ca *pki.CA) *httptest.Server {
	t.Helper()
	return serveTLS(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			w.Write([]byte("ok"))
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"status":{"userInfo":{"username":"system:bootstrap:abcdef"}}}`))
	}), nil)
}

func newCA(t *testing.T, name string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(name, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func isPending(err error) bool {
	var p *pendingErr
	return errors.As(err, &p)
}

func TestJoinChecksCAAndToken(t *testing.T) {
	ca, other := newCA(t, "kiln-ca"), newCA(t, "other-ca")
	srv := apiServer(t, ca)
	endpoint := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	ctx := context.Background()

	got, err := discoverCA(ctx, endpoint, pki.CAHash(ca.Cert))
	if err != nil {
		t.Fatalf("right pin: %v", err)
	}
	if !got.Equal(ca.Cert) {
		t.Fatal("discovered another certificate than the CA")
	}
	_, err = discoverCA(ctx, endpoint, pki.CAHash(other.Cert))
	if err == nil || !strings.Contains(err.Error(), "does not present the pinned cluster CA "+pki.CAHash(other.Cert)) || !strings.Contains(err.Error(), pki.CAHash(ca.Cert)) {
		t.Fatalf("wrong pin: %v", err)
	}
	if isPending(err) {
		t.Error("a CA that is not the pinned one is waited for: time does not cure it")
	}

	c := caClient(ca.Cert)
	if err := checkToken(ctx, c, endpoint, testToken); err != nil {
		t.Fatalf("right token: %v", err)
	}
	err = checkToken(ctx, c, endpoint, "abcdef.ffffffffffffffff")
	if err == nil || !strings.Contains(err.Error(), "refused bootstrap token abcdef") || strings.Contains(err.Error(), "ffff") {
		t.Fatalf("wrong token (the error must name the id, never the secret): %v", err)
	}
	var p *pendingErr
	if !errors.As(err, &p) || p.kind != waitToken || !strings.Contains(p.reason, "refused bootstrap token abcdef") || strings.Contains(p.reason, "ffff") {
		t.Fatalf("a refused token is waited for (the master's add-ons may not have created it yet), saying so: %#v", p)
	}
	_, err = discoverCA(ctx, "https://localhost:1", pki.CAHash(ca.Cert))
	if err == nil || !strings.Contains(err.Error(), "cannot reach the master") || !isPending(err) {
		t.Fatalf("unreachable: %v", err)
	}
}

// A refusal while the API server is not ready is the API server's, not the
// token's.
func TestJoinTokenRefusedBeforeReady(t *testing.T) {
	ca := newCA(t, "kiln-ca")
	srv := serveTLS(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			http.Error(w, "[-]poststarthook/rbac/bootstrap-roles failed", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
	}), nil)
	err := checkToken(context.Background(), caClient(ca.Cert), srv.URL, testToken)
	var p *pendingErr
	if !errors.As(err, &p) || p.kind != waitReady {
		t.Fatalf("401 before readyz: %v", err)
	}
}

// fakeMaster is a master that comes up bit by bit: its first connections
// are dropped (not listening yet), then it refuses the token (its add-ons
// have not run), then forbids the request (no join RBAC yet), then leaves
// the request undecided for a while, then grants it, or denies it if deny.
type fakeMaster struct {
	t                          *testing.T
	ca                         *pki.CA
	drops, refusals, forbidden int32 // how many of each before it gives in
	undecided                  int32
	deny                       string // the denial's message, if any
	accepts, reviews, creates  atomic.Int32
	gets                       atomic.Int32
	mu                         sync.Mutex
	created                    *certificatesv1.CertificateSigningRequest
	srv                        *httptest.Server
	endpoint, host             string
	alwaysRefuse               bool
}

// dropListener closes the first n connections it accepts.
type dropListener struct {
	net.Listener
	m *fakeMaster
}

func (l dropListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.m.accepts.Add(1) <= l.m.drops {
			c.Close()
			continue
		}
		return c, nil
	}
}

func (m *fakeMaster) start() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.t.Fatal(err)
	}
	m.srv = serveTLS(m.t, m.ca, m, dropListener{ln, m})
	m.endpoint = m.srv.URL
	m.host = strings.TrimPrefix(m.srv.URL, "https://")
}

func (m *fakeMaster) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	const csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
	if r.URL.Path == "/readyz" {
		w.Write([]byte("ok"))
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+testToken {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	status := func(code int, reason metav1.StatusReason) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure, Code: int32(code), Reason: reason, Message: string(reason)})
	}
	send := func(code int, csr *certificatesv1.CertificateSigningRequest) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(csr)
	}
	switch {
	case r.URL.Path == "/apis/authentication.k8s.io/v1/selfsubjectreviews":
		if n := m.reviews.Add(1); m.alwaysRefuse || n <= m.refusals {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"status":{"userInfo":{"username":"system:bootstrap:abcdef"}}}`))
	case r.URL.Path == csrs && r.Method == http.MethodPost:
		if m.creates.Add(1) <= m.forbidden {
			status(http.StatusForbidden, metav1.StatusReasonForbidden)
			return
		}
		body, _ := io.ReadAll(r.Body)
		obj, err := runtime.Decode(scheme.Codecs.UniversalDeserializer(), body)
		csr, ok := obj.(*certificatesv1.CertificateSigningRequest)
		if err != nil || !ok {
			m.t.Errorf("a CSR (%s) that does not decode: %v", r.Header.Get("Content-Type"), err)
			status(http.StatusBadRequest, metav1.StatusReasonBadRequest)
			return
		}
		csr.TypeMeta = metav1.TypeMeta{Kind: "CertificateSigningRequest", APIVersion: "certificates.k8s.io/v1"}
		csr.Name = csr.GenerateName + "x1"
		m.mu.Lock()
		m.created = csr
		m.mu.Unlock()
		send(http.StatusCreated, csr)
	case strings.HasPrefix(r.URL.Path, csrs+"/") && r.Method == http.MethodGet:
		m.mu.Lock()
		csr := m.created.DeepCopy()
		m.mu.Unlock()
		if strings.TrimPrefix(r.URL.Path, csrs+"/") != csr.Name {
			status(http.StatusNotFound, metav1.StatusReasonNotFound)
			return
		}
		if m.gets.Add(1) > m.undecided {
			if m.deny != "" {
				csr.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{{Type: certificatesv1.CertificateDenied, Status: "True", Message: m.deny}}
			} else {
				certPEM, _, err := m.ca.Issue(pki.CertRequest{CommonName: "system:node:w1", Organization: []string{"system:nodes"}, Client: true, Validity: time.Hour})
				if err != nil {
					m.t.Error(err)
				}
				csr.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{{Type: certificatesv1.CertificateApproved, Status: "True"}}
				csr.Status.Certificate = certPEM
			}
		}
		send(http.StatusOK, csr)
	default:
		status(http.StatusNotFound, metav1.StatusReasonNotFound)
	}
}

// written is what join wrote to out (testutil.SyncBuffer: join writes
// while the test reads), a line each.
func written(out *testutil.SyncBuffer) []string {
	return strings.Split(strings.TrimSpace(out.String()), "\n")
}

func testJoinOptions(t *testing.T, m *fakeMaster, out *testutil.SyncBuffer) *joinOptions {
	dir := t.TempDir()
	return &joinOptions{
		endpoint: m.endpoint, caHash: pki.CAHash(m.ca.Cert), token: testToken, clusterName: "kiln", nodeName: "w1",
		identity: ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)),
		caOut:    filepath.Join(dir, "ca.crt"), kubeconfig: filepath.Join(dir, "kubelet.conf"), certDir: filepath.Join(dir, "pki"),
		out:  out,
		poll: 5 * time.Millisecond, report: time.Hour, request: 5 * time.Second,
	}
}

// A worker faster than its master waits for it within one run: through a
// master not listening yet, a token not applied yet, no join RBAC yet and
// an undecided request, with one line per kind of wait, never one per
// poll.
func TestJoinWaitsForTheMaster(t *testing.T) {
	m := &fakeMaster{t: t, ca: newCA(t, "kiln-ca"), drops: 5, refusals: 5, forbidden: 5, undecided: 5}
	m.start()
	out := &testutil.SyncBuffer{}
	o := testJoinOptions(t, m, out)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := join(ctx, o); err != nil {
		t.Fatalf("join: %v\n%s", err, strings.Join(written(out), "\n"))
	}
	lines := written(out)
	want := []string{
		"join: waiting for the master at " + m.host + ": not reachable: ",
		"join: waiting for the master at " + m.host + ": it refused bootstrap token abcdef.<secret> (401 Unauthorized)",
		"join: waiting for the master at " + m.host + ": it does not let bootstrap token abcdef ask for a certificate yet (403 Forbidden",
		"join: waiting for the master at " + m.host + ": request kiln-join-w1-x1 for node name w1 not decided yet (",
		"join: the master at " + m.host + " answered after ",
		"join: master " + m.endpoint + " verified (CA " + o.caHash + "), bootstrap token abcdef accepted, node name w1 granted (kiln-join-w1-x1)",
	}
	if len(lines) != len(want) {
		t.Fatalf("lines:\n%s\nwant %d lines (one per kind of wait, not one per poll)", strings.Join(lines, "\n"), len(want))
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("line %d:\n%s\nwant it to begin\n%s", i, lines[i], want[i])
		}
	}
	for _, l := range lines {
		if strings.Contains(l, "0123456789abcdef") {
			t.Errorf("a line shows the token's secret: %s", l)
		}
	}
	if m.reviews.Load() < 6 || m.creates.Load() < 6 || m.gets.Load() < 6 {
		t.Errorf("reviews %d, creates %d, gets %d: want each retried until it passed", m.reviews.Load(), m.creates.Load(), m.gets.Load())
	}
	kc, err := os.ReadFile(o.kubeconfig)
	if err != nil || !strings.Contains(string(kc), "system:node:w1") {
		t.Errorf("kubeconfig: %v %s", err, kc)
	}
	// The kubeconfig names the kubelet's current pair, a symlink the
	// kubelet moves when it rotates the certificate.
	parsed, err := pki.ParseKubeconfig(kc)
	pair := filepath.Join(o.certDir, "kubelet-client-current.pem")
	if err != nil || parsed.CertFile != pair || parsed.KeyFile != pair || len(parsed.CertPEM) != 0 {
		t.Errorf("kubeconfig names %q and %q (%v), want %s", parsed.CertFile, parsed.KeyFile, err, pair)
	}
	if fi, err := os.Lstat(pair); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("%s: %v, want a symlink", pair, err)
	}
	if data, err := os.ReadFile(pair); err != nil || !strings.Contains(string(data), "CERTIFICATE") || !strings.Contains(string(data), "PRIVATE KEY") {
		t.Errorf("the pair %s: %v", pair, err)
	}
	if _, err := os.Stat(o.caOut); err != nil {
		t.Error(err)
	}
}

// A refusal time does not cure ends the run at once, with its message.
func TestJoinDoesNotWaitForTheIncurable(t *testing.T) {
	for name, tc := range map[string]struct {
		m    *fakeMaster
		pin  string
		want string
	}{
		"another CA": {m: &fakeMaster{}, pin: pki.CAHash(newCA(t, "other-ca").Cert), want: "does not present the pinned cluster CA"},
		"a name another machine holds": {m: &fakeMaster{undecided: 2, deny: "node name w1 is held by another machine (another identity key)"},
			want: "the cluster refused node name w1: node name w1 is held by another machine"},
	} {
		t.Run(name, func(t *testing.T) {
			m := tc.m
			m.t, m.ca = t, newCA(t, "kiln-ca")
			m.start()
			out := &testutil.SyncBuffer{}
			o := testJoinOptions(t, m, out)
			if tc.pin != "" {
				o.caHash = tc.pin
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			err := join(ctx, o)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "still so after waiting") {
				t.Fatalf("err %v, want %q at once", err, tc.want)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %s", d)
			}
			if _, err := os.Stat(o.kubeconfig); err == nil {
				t.Error("a kubeconfig written")
			}
		})
	}
}

// A token refused for the whole run (a wrong one): the refusal is on the
// first line, on a line every report interval, and the run's error, what
// the console shows.
func TestJoinGivesUpOnARefusedToken(t *testing.T) {
	m := &fakeMaster{t: t, ca: newCA(t, "kiln-ca"), alwaysRefuse: true}
	m.start()
	out := &testutil.SyncBuffer{}
	o := testJoinOptions(t, m, out)
	o.report, o.tokenPatience = 100*time.Millisecond, 550*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := join(ctx, o)
	if d := time.Since(start); d < 500*time.Millisecond || d > 10*time.Second {
		t.Errorf("gave up after %s, want the token's patience", d)
	}
	if err == nil || !strings.Contains(err.Error(), "the master refused bootstrap token abcdef.<secret> (401 Unauthorized): it is wrong, expired or deleted") ||
		!strings.Contains(err.Error(), "still so after waiting") {
		t.Fatalf("err %v", err)
	}
	lines := written(out)
	polls := m.reviews.Load()
	if len(lines) < 3 || len(lines) > 8 || int32(len(lines)) >= polls/3 {
		t.Errorf("%d lines for %d polls:\n%s", len(lines), polls, strings.Join(lines, "\n"))
	}
	for i, l := range lines {
		if !strings.Contains(l, "refused bootstrap token abcdef") {
			t.Errorf("line %d does not name the refusal: %s", i, l)
		}
		if i > 0 && !strings.HasSuffix(l, "s)") {
			t.Errorf("line %d does not say how long it waited: %s", i, l)
		}
	}
}

// A master that does not come within the run: its reason is the run's
// error.
func TestJoinGivesUpOnAnUnreachableMaster(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	out := &testutil.SyncBuffer{}
	dir := t.TempDir()
	o := &joinOptions{endpoint: "https://" + addr, caHash: "sha256:00", token: testToken, nodeName: "w1",
		caOut: filepath.Join(dir, "ca.crt"), kubeconfig: filepath.Join(dir, "kubelet.conf"), certDir: dir,
		out: out, poll: 5 * time.Millisecond, report: time.Hour, request: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = join(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the master at "+addr) || !strings.Contains(err.Error(), "still so after waiting") {
		t.Fatalf("err %v", err)
	}
	if lines := written(out); len(lines) != 1 || !strings.HasPrefix(lines[0], "join: waiting for the master at "+addr+": not reachable: ") {
		t.Errorf("lines %q, want one", lines)
	}
}

// A worker with a state disk keeps its kubelet's certificate across
// reboots: join asks for a new one only when it is not the node's, not
// the cluster CA's, or about to expire.
func TestValidKubeletCert(t *testing.T) {
	ca, other := newCA(t, "kiln-ca"), newCA(t, "other-ca")
	write := func(issuer *pki.CA, cn string, validity time.Duration) string {
		certPEM, keyPEM, err := issuer.Issue(pki.CertRequest{CommonName: cn, Organization: []string{"system:nodes"}, Client: true, Validity: validity})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "kubelet-client-current.pem")
		if err := os.WriteFile(p, append(certPEM, keyPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, ok := validKubeletCert(write(ca, "system:node:w1", 24*time.Hour), ca.Cert, "system:node:w1"); !ok {
		t.Error("the node's own certificate was not kept")
	}
	for name, path := range map[string]string{
		"another node's": write(ca, "system:node:w2", 24*time.Hour),
		"another CA's":   write(other, "system:node:w1", 24*time.Hour),
		"expiring":       write(ca, "system:node:w1", 30*time.Minute),
		"missing":        filepath.Join(t.TempDir(), "none.pem"),
	} {
		if _, ok := validKubeletCert(path, ca.Cert, "system:node:w1"); ok {
			t.Errorf("%s certificate kept", name)
		}
	}
}
