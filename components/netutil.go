package components

import (
	"fmt"
	"math/big"
	"net"
	"strings"
)

// firstIP is the first usable address of a CIDR: the kubernetes Service's
// ClusterIP in the service range.
func firstIP(cidr string) (net.IP, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, err
	}
	i := new(big.Int).SetBytes(n.IP)
	i.Add(i, big.NewInt(1))
	b := i.Bytes()
	ip := make(net.IP, len(n.IP))
	copy(ip[len(ip)-len(b):], b)
	if !n.Contains(ip) {
		return nil, fmt.Errorf("%s has no usable address", cidr)
	}
	return ip, nil
}

func trimScheme(endpoint string) string {
	return strings.TrimPrefix(strings.TrimPrefix(endpoint, "https://"), "http://")
}
