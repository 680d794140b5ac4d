package node

import (
	"fmt"
	"time"
)

// Certificates is how long the leaf certificates of the cluster's nodes
// live: every certificate a master issues for its own components, and
// the kubelets' certificates its controller-manager signs
// (--cluster-signing-duration), on every node. A certificate is renewed
// once two thirds of its lifetime have passed, without a restart
// (components/certs.go). The CAs' own lifetimes are the cluster
// directory's (kiln gen cluster: 10 years).
//
//	certificates:
//	  validity: 8760h   # 365 days, the default
type Certificates struct {
	// Validity of each leaf certificate, e.g. 8760h or 720h. Tests set
	// minutes, to see every certificate renewed.
	Validity Duration `yaml:"validity"`
}

// Bounds of certificates.validity.
const (
	DefaultCertValidity = 365 * 24 * time.Hour
	// MinCertValidity: the kubelet rotates its certificates at 70-90% of
	// a lifetime that counts the signer's 5 minutes of backdating, and
	// a component picks a renewed file up within a second (client-go,
	// etcd) or a minute (the API server's file watch at worst); shorter
	// lifetimes leave no room for that.
	MinCertValidity = 3 * time.Minute
	// MaxCertValidity is the CA's own default lifetime; a certificate
	// never outlives its CA anyway.
	MaxCertValidity = 10 * 365 * 24 * time.Hour
)

func (c Certificates) validate() []error {
	v := time.Duration(c.Validity)
	switch {
	case v < MinCertValidity:
		return []error{fmt.Errorf("certificates.validity: %s is shorter than %s; want e.g. 8760h (365 days, the default), or minutes only in a test", v, MinCertValidity)}
	case v > MaxCertValidity:
		return []error{fmt.Errorf("certificates.validity: %s is longer than %s (10 years, the CA's own lifetime); want e.g. 8760h (365 days, the default)", v, MaxCertValidity)}
	}
	return nil
}
