package components

import (
	"context"
	"crypto/tls"
	"net/url"

	"sigs.k8s.io/yaml"

	"kiln/configs/node"
	"kiln/pki"
)

// Etcd is the cluster's store: embedded etcd v3.7 (go.etcd.io/etcd/server/v3/embed),
// TLS for clients and peers, client certificates required.
type Etcd struct{}

var _ Component = Etcd{}
var _ Prober = Etcd{}
var _ Listener = Etcd{}

func (Etcd) Name() string        { return node.ComponentEtcd }
func (Etcd) Roles() []node.Role  { return []node.Role{node.RoleMaster} }
func (Etcd) DependsOn() []string { return nil }
func (Etcd) Listens(env *Env) []string {
	return []string{hostPort(env.Config.Address, env.Config.Ports.EtcdClient), hostPort(env.Config.Address, env.Config.Ports.EtcdPeer)}
}

// etcd's files, under the data dir.
const (
	etcdConfigFile = "config/etcd.yaml"
	etcdServerCert = "pki/etcd/server.crt"
	etcdServerKey  = "pki/etcd/server.key"
	etcdPeerCert   = "pki/etcd/peer.crt"
	etcdPeerKey    = "pki/etcd/peer.key"
	etcdCACert     = "pki/etcd/ca.crt"
	etcdClientCert = "pki/apiserver-etcd-client.crt" // also used by the readiness probe
	etcdClientKey  = "pki/apiserver-etcd-client.key"
)

// etcdConfig mirrors the part of etcd's YAML config file kiln sets.
type etcdConfig struct {
	Name                     string   `json:"name"`
	DataDir                  string   `json:"data-dir"`
	ListenClientURLs         string   `json:"listen-client-urls"`
	AdvertiseClientURLs      string   `json:"advertise-client-urls"`
	ListenPeerURLs           string   `json:"listen-peer-urls"`
	InitialAdvertisePeerURLs string   `json:"initial-advertise-peer-urls"`
	InitialCluster           string   `json:"initial-cluster"`
	InitialClusterState      string   `json:"initial-cluster-state"`
	InitialClusterToken      string   `json:"initial-cluster-token"`
	ClientTransportSecurity  etcdTLS  `json:"client-transport-security"`
	PeerTransportSecurity    etcdTLS  `json:"peer-transport-security"`
	Logger                   string   `json:"logger"`
	LogOutputs               []string `json:"log-outputs"`
	LogLevel                 string   `json:"log-level"`
	// Sized to the node (memory.go); omitted: etcd's defaults.
	SnapshotCount     uint64 `json:"snapshot-count,omitempty"`
	QuotaBackendBytes int64  `json:"quota-backend-bytes,omitempty"`
	MaxWALs           uint   `json:"max-wals,omitempty"`
}

type etcdTLS struct {
	CertFile       string `json:"cert-file"`
	KeyFile        string `json:"key-file"`
	ClientCertAuth bool   `json:"client-cert-auth"`
	TrustedCAFile  string `json:"trusted-ca-file"`
}

func (e Etcd) Prepare(env *Env) error {
	ca := env.Cluster.EtcdCA
	if err := pki.WriteFile(env.Path(etcdCACert), ca.CertPEM, false); err != nil {
		return err
	}
	names := []string{"localhost", env.NodeName}
	if err := issue(ca, env.Path(etcdServerCert), env.Path(etcdServerKey), pki.CertRequest{
		CommonName: env.NodeName, DNSNames: names, IPs: nodeIPs(env), Server: true, Client: true,
	}); err != nil {
		return err
	}
	if err := issue(ca, env.Path(etcdPeerCert), env.Path(etcdPeerKey), pki.CertRequest{
		CommonName: env.NodeName, DNSNames: names, IPs: nodeIPs(env), Server: true, Client: true,
	}); err != nil {
		return err
	}
	if err := issue(ca, env.Path(etcdClientCert), env.Path(etcdClientKey), pki.CertRequest{
		CommonName: "kube-apiserver-etcd-client", Client: true,
	}); err != nil {
		return err
	}
	quota, maxWALs := etcdTuning(env.Memory.Total)
	client := env.URL(env.Config.Ports.EtcdClient)
	peer := env.URL(env.Config.Ports.EtcdPeer)
	cfg := etcdConfig{
		Name:                     env.NodeName,
		DataDir:                  env.Path("etcd"),
		ListenClientURLs:         client,
		AdvertiseClientURLs:      client,
		ListenPeerURLs:           peer,
		InitialAdvertisePeerURLs: peer,
		InitialCluster:           env.NodeName + "=" + peer,
		InitialClusterState:      "new",
		InitialClusterToken:      env.Cluster.Name,
		ClientTransportSecurity: etcdTLS{
			CertFile: env.Path(etcdServerCert), KeyFile: env.Path(etcdServerKey),
			ClientCertAuth: true, TrustedCAFile: env.Path(etcdCACert),
		},
		PeerTransportSecurity: etcdTLS{
			CertFile: env.Path(etcdPeerCert), KeyFile: env.Path(etcdPeerKey),
			ClientCertAuth: true, TrustedCAFile: env.Path(etcdCACert),
		},
		Logger:     "zap",
		LogOutputs: []string{"stderr"},
		LogLevel:   "warn",
		// A small node's etcd holds fewer raft entries in memory, stops
		// its database at a size the node can hold, and keeps fewer WAL
		// files (on a diskless master all of them are in RAM).
		SnapshotCount:     etcdSnapshotCount,
		QuotaBackendBytes: int64(quota),
		MaxWALs:           maxWALs,
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	return pki.WriteFile(env.Path(etcdConfigFile), data, false)
}

// Flags: etcd reads everything from its config file; extraArgs for etcd are
// not flags but are rejected by the embed entry point if unknown.
func (Etcd) Flags(env *Env) map[string]string {
	return map[string]string{"config-file": env.Path(etcdConfigFile)}
}

// Ready asks etcd's /health with the apiserver's client certificate: it is
// true only once the member has a leader and serves reads.
func (Etcd) Ready(ctx context.Context, env *Env) error {
	cert, err := tls.LoadX509KeyPair(env.Path(etcdClientCert), env.Path(etcdClientKey))
	if err != nil {
		return err
	}
	u, _ := url.JoinPath(env.URL(env.Config.Ports.EtcdClient), "health")
	return probeHTTPS(ctx, u, &tls.Config{
		RootCAs:      caPool(env.Cluster.EtcdCA.CertPEM),
		Certificates: []tls.Certificate{cert},
		ServerName:   "localhost",
	}, `"health":"true"`)
}

func etcdServers(env *Env) string { return env.URL(env.Config.Ports.EtcdClient) }
