package up

import (
	"strings"
	"testing"

	"kiln/configs/cluster"
)

func TestCheckAddressRanges(t *testing.T) {
	cl := &cluster.Cluster{Dir: "/c", ServiceCIDR: "10.96.0.0/12", PodCIDR: "10.244.0.0/16"}
	for addr, want := range map[string]string{
		"10.120.0.10":  "",
		"127.0.0.2":    "",
		"10.99.0.10":   "inside the cluster's serviceCIDR 10.96.0.0/12",
		"10.244.3.4":   "inside the cluster's podCIDR 10.244.0.0/16",
		"not-an-addr!": "",
	} {
		err := checkAddressRanges(addr, cl)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: %v, want %q", addr, err, want)
		}
	}
}
