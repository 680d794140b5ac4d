package node

import (
	"strings"
	"testing"
	"time"
)

func TestCertificatesValidity(t *testing.T) {
	head := "apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: master\naddress: 10.0.0.10\n"
	for doc, want := range map[string]time.Duration{
		"":                                   365 * 24 * time.Hour,
		"certificates: {validity: 720h}":     720 * time.Hour,
		"certificates: {validity: 10m}":      10 * time.Minute,
		"certificates: {validity: 3m}":       3 * time.Minute,
		"certificates: {validity: null}":     365 * 24 * time.Hour,
		"certificates: {validity: 87600h}":   87600 * time.Hour,
		"certificates:\n  validity: 1h30m\n": 90 * time.Minute,
	} {
		cfg, err := Parse([]byte(head + doc + "\n"))
		if err != nil {
			t.Errorf("%q: %v", doc, err)
			continue
		}
		if got := time.Duration(cfg.Certificates.Validity); got != want {
			t.Errorf("%q: validity %s, want %s", doc, got, want)
		}
	}
	for doc, want := range map[string]string{
		"certificates: {validity: 2m}":     "certificates.validity: 2m0s is shorter than 3m0s; want e.g. 8760h",
		"certificates: {validity: 0}":      "certificates.validity: 0s is shorter than 3m0s",
		"certificates: {validity: -1h}":    "certificates.validity: -1h0m0s is shorter than 3m0s",
		"certificates: {validity: 87601h}": "certificates.validity: 87601h0m0s is longer than 87600h0m0s (10 years",
		"certificates: {validity: 365d}":   `"365d" is not a duration`,
		"certificates: {lifetime: 1h}":     `unknown field "lifetime"`,
	} {
		_, err := Parse([]byte(head + doc + "\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", doc, err, want)
		}
	}
}
