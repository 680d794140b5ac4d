package nodeapi

import (
	"strings"
	"testing"
	"time"
)

func TestWriteCertsTable(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	c := Certs{Node: "m1", Validity: "8760h0m0s", Certs: []Cert{
		{Name: "kube-apiserver serving", Path: "/d/pki/apiserver.crt", Subject: "CN=kube-apiserver",
			NotAfter: now.Add(365 * 24 * time.Hour), RenewAt: now.Add(243 * 24 * time.Hour), RenewedBy: RenewedByNode},
		{Name: "kubelet serving", Path: "/d/kubelet/pki/kubelet-server-current.pem", RenewedBy: RenewedByKubelet, Error: "no such file"},
		{Name: "etcd client", Path: "/d/x.crt", Subject: "CN=x", NotAfter: now.Add(90 * time.Second), RenewAt: now.Add(-30 * time.Second), RenewedBy: RenewedByNode},
		{Name: "cluster CA", Path: "/d/pki/ca.crt", Subject: "CN=kiln-ca", NotAfter: now.Add(3 * time.Hour), RenewedBy: RenewedByNobody},
	}}
	var b strings.Builder
	if err := WriteCertsTable(&b, c, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"node m1, certificates.validity 8760h0m0s",
		"kube-apiserver serving  2027-12-03T12:00:00Z (in 365d0h)",
		"in 243d0h",
		"kubelet serving         -",
		"no such file",
		"(in 1m30s)   30s ago",
		"(in 3h0m)",
		"nobody",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
