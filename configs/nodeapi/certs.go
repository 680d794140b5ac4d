package nodeapi

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// PathCerts: GET, the node's certificates as Certs (JSON), for the admin
// group only (kiln certs --node).
const PathCerts = "/certs"

// Who renews a certificate (Cert.RenewedBy).
const (
	RenewedByNode    = "node"    // this node's kiln-node, in place (components.Cert)
	RenewedByKubelet = "kubelet" // the kubelet, through the cluster's certificate API
	RenewedByNobody  = "nobody"  // a CA: README, "The cluster CA"
)

// Cert is one certificate a node uses.
type Cert struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// Subject and Issuer are the certificate's, as Go writes a name
	// ("CN=kube-apiserver", "CN=system:node:w1,O=system:nodes").
	Subject   string    `json:"subject,omitempty"`
	Issuer    string    `json:"issuer,omitempty"`
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	// RenewAt is when it is renewed: for the node, two thirds into its
	// lifetime; for the kubelet, the start of the window in which it
	// rotates it (70% to 90% of its lifetime). Zero for a CA.
	RenewAt   time.Time `json:"renewAt,omitzero"`
	RenewedBy string    `json:"renewedBy"`
	// Users are who read it.
	Users string `json:"users,omitempty"`
	// Error is why the file could not be read (a kubelet that has no
	// serving certificate yet).
	Error string `json:"error,omitempty"`
}

// Certs is a node's answer to PathCerts.
type Certs struct {
	Node string `json:"node"`
	// Validity is the node's certificates.validity.
	Validity string `json:"validity"`
	Certs    []Cert `json:"certs"`
}

// WriteCertsTable prints the certificates as `kiln certs --node` shows
// them, times relative to now.
func WriteCertsTable(w io.Writer, c Certs, now time.Time) error {
	fmt.Fprintf(w, "node %s, certificates.validity %s\n", c.Node, c.Validity)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CERTIFICATE\tEXPIRES\tRENEWAL\tBY\tSUBJECT\tPATH")
	for _, x := range c.Certs {
		if x.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t%s\t%s\t%s\n", x.Name, x.RenewedBy, x.Error, x.Path)
			continue
		}
		renew := "-"
		if !x.RenewAt.IsZero() {
			renew = relative(x.RenewAt, now)
		}
		fmt.Fprintf(tw, "%s\t%s (%s)\t%s\t%s\t%s\t%s\n", x.Name, x.NotAfter.UTC().Format(time.RFC3339), relative(x.NotAfter, now),
			renew, x.RenewedBy, x.Subject, x.Path)
	}
	return tw.Flush()
}

// relative says when t is from now: "in 3d4h", "in 2m10s", "5m ago".
func relative(t, now time.Time) string {
	d := t.Sub(now)
	past := d < 0
	if past {
		d = -d
	}
	var s string
	switch {
	case d >= 48*time.Hour:
		s = fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	case d >= time.Hour:
		s = strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	default:
		s = d.Round(time.Second).String()
	}
	if past {
		return s + " ago"
	}
	return "in " + s
}
