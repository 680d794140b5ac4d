package components

import (
	"net"
	"strconv"
)

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// nodeIPs are the addresses a serving certificate of this node must carry.
func nodeIPs(env *Env) []net.IP {
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	if ip := net.ParseIP(env.Config.Address); ip != nil && !ip.Equal(ips[0]) {
		ips = append(ips, ip)
	}
	return ips
}
