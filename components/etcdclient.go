package components

// EtcdClientFiles are the certificate, key and CA files a client of this
// master's etcd uses (the API server's etcd client certificate, which
// Etcd.Prepare writes): the node API's etcd paths use them too.
func EtcdClientFiles(env *Env) (cert, key, ca string) {
	return env.Path(etcdClientCert), env.Path(etcdClientKey), env.Path(etcdCACert)
}

// EtcdEndpoints are the client URLs of this master's etcd and then of
// the other masters' (controlPlane.masters), for a client that must keep
// working while this member is down or still a learner.
func EtcdEndpoints(env *Env) []string {
	out := []string{env.URL(env.Config.Ports.EtcdClient)}
	for _, m := range env.Config.PeerMasters() {
		out = append(out, "https://"+hostPort(m, env.Config.Ports.EtcdClient))
	}
	return out
}
