package up

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"kiln/components"
	"kiln/configs/cluster"
	"kiln/configs/node"
	"kiln/configs/nodeapi"
)

// recordingSup records restarts and waits, in order.
type recordingSup struct{ calls []string }

func (f *recordingSup) Restart(_ context.Context, name string) error {
	f.calls = append(f.calls, "restart "+name)
	return nil
}

func (f *recordingSup) WaitReady(_ context.Context, names ...string) error {
	f.calls = append(f.calls, "ready "+strings.Join(names, ","))
	return nil
}

func certEnv(t *testing.T) *components.Env {
	t.Helper()
	dir := t.TempDir()
	cl, err := cluster.Generate(filepath.Join(dir, "cluster"), cluster.Options{Name: "unit", Endpoint: "127.0.0.1:6443"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := node.Default()
	cfg.RunPods = false
	cfg.Certificates.Validity = node.Duration(3 * time.Minute)
	env := &components.Env{Config: cfg, Cluster: cl, NodeName: "m1", DataDir: filepath.Join(dir, "data")}
	if err := (components.APIServer{}).Prepare(env); err != nil {
		t.Fatal(err)
	}
	return env
}

// Due certificates are renewed in place; a component that cannot read
// its renewed certificate by itself is restarted after, once however
// many of its certificates were renewed, one component at a time, each
// ready again before the next.
func TestRenewerPass(t *testing.T) {
	env := certEnv(t)
	certs := components.APIServer{}.Certs(env)
	certs[0].Restart, certs[1].Restart, certs[2].Restart = "kube-apiserver", "kube-apiserver", "etcd"
	serials := map[string]string{}
	for _, c := range certs {
		cert, err := components.ReadCert(c.File)
		if err != nil {
			t.Fatal(err)
		}
		serials[c.Name] = cert.SerialNumber.String()
	}
	sup := &recordingSup{}
	var said []string
	later := time.Now().Add(2*time.Minute + 5*time.Second)
	r := &renewer{env: env, certs: certs, sup: sup, now: func() time.Time { return later }, readyWait: time.Second,
		say: func(format string, args ...any) { said = append(said, fmt.Sprintf(format, args...)) }}
	r.pass(context.Background())
	for _, c := range certs {
		cert, _ := components.ReadCert(c.File)
		if cert.SerialNumber.String() == serials[c.Name] {
			t.Errorf("%s not renewed", c.Name)
		}
	}
	if want := []string{"restart kube-apiserver", "ready kube-apiserver", "restart etcd", "ready etcd"}; !slices.Equal(sup.calls, want) {
		t.Errorf("supervisor calls %q, want %q", sup.calls, want)
	}
	if len(said) != 3 || !strings.HasPrefix(said[0], "certificates: renewed kube-apiserver serving (due ") {
		t.Errorf("console:\n%s", strings.Join(said, "\n"))
	}

	// Nothing due now: nothing renewed, nothing restarted.
	sup.calls, said = nil, nil
	r.now = time.Now
	r.pass(context.Background())
	if len(sup.calls) != 0 || len(said) != 0 {
		t.Errorf("a pass with nothing due: %q %q", sup.calls, said)
	}
	if got := renewEvery(3 * time.Minute); got != 6*time.Second {
		t.Errorf("renewEvery(3m) = %s", got)
	}
	if got := renewEvery(365 * 24 * time.Hour); got != time.Minute {
		t.Errorf("renewEvery(365d) = %s", got)
	}
}

// A CA that ends within the half year is said on the console, once a day.
func TestRenewerSaysTheCAsEnd(t *testing.T) {
	env := certEnv(t)
	var said []string
	now := time.Now().Add(10*365*24*time.Hour - 100*24*time.Hour)
	r := &renewer{env: env, sup: &recordingSup{}, now: func() time.Time { return now },
		say: func(format string, args ...any) { said = append(said, fmt.Sprintf(format, args...)) }}
	r.pass(context.Background())
	r.pass(context.Background())
	if len(said) != 3 || !strings.Contains(said[0], "WARNING: the cluster CA ends on") || !strings.Contains(said[1], "the etcd CA ends on") {
		t.Errorf("console:\n%s", strings.Join(said, "\n"))
	}
}

// GET /certs lists the node's certificates with their renewal.
func TestServeCerts(t *testing.T) {
	env := certEnv(t)
	op := operatorOf(env, nil)
	srv := httptest.NewServer(withOperator(op, http.NotFoundHandler()))
	defer srv.Close()
	resp, err := http.Get(srv.URL + nodeapi.PathCerts)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got nodeapi.Certs
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Node != "m1" || got.Validity != "3m0s" {
		t.Errorf("node %q validity %q", got.Node, got.Validity)
	}
	byName := map[string]nodeapi.Cert{}
	for _, c := range got.Certs {
		byName[c.Name] = c
	}
	api := byName["kube-apiserver serving"]
	if api.Subject != "CN=kube-apiserver" || api.RenewedBy != nodeapi.RenewedByNode || api.Error != "" ||
		api.RenewAt.Before(time.Now().Add(time.Minute)) || !api.RenewAt.Before(api.NotAfter) {
		t.Errorf("kube-apiserver serving: %+v", api)
	}
	if ca := byName["cluster CA"]; ca.RenewedBy != nodeapi.RenewedByNobody || !ca.RenewAt.IsZero() || ca.NotAfter.Before(time.Now().Add(9*365*24*time.Hour)) {
		t.Errorf("cluster CA: %+v", ca)
	}
	// Not issued in this test: listed with why.
	if e := byName["etcd serving"]; e.Error != "no such file" {
		t.Errorf("etcd serving: %+v", e)
	}
	var table strings.Builder
	if err := nodeapi.WriteCertsTable(&table, got, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "kube-apiserver serving") || !strings.Contains(table.String(), "  in 1m") {
		t.Errorf("table:\n%s", table.String())
	}
}
