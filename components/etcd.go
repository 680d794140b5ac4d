package components

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

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
	// EtcdSnapshotDir holds the scheduled snapshots, on a state disk.
	EtcdSnapshotDir = "etcd-snapshots"
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
	SnapshotCount uint64 `json:"snapshot-count,omitempty"`
	// Raft timing in milliseconds; omitted: etcd's 100 and 1000.
	HeartbeatInterval uint  `json:"heartbeat-interval,omitempty"`
	ElectionTimeout   uint  `json:"election-timeout,omitempty"`
	QuotaBackendBytes int64 `json:"quota-backend-bytes,omitempty"`
	MaxWALs           uint  `json:"max-wals,omitempty"`
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
	if err := issueAll(env, e.Certs(env)); err != nil {
		return err
	}
	quota, maxWALs := etcdTuning(env.Memory.Total)
	client := env.URL(env.Config.Ports.EtcdClient)
	peer := env.URL(env.Config.Ports.EtcdPeer)
	cfg := etcdConfig{
		Name:                     env.NodeName,
		DataDir:                  EtcdDataDir(env),
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
	if len(env.Config.PeerMasters()) > 0 {
		// Several members hold elections. etcd's defaults (a heartbeat
		// every 100 ms, an election after 1 s of silence) suit a quiet
		// data-centre network; a small or busy node (or a VM without
		// KVM, ~12x slower) misses heartbeats under load, and every
		// missed one starts an election that stops all writes. Five
		// times slower raft costs a few seconds of failover when the
		// leader dies, and keeps the cluster writable the rest of the time.
		cfg.HeartbeatInterval, cfg.ElectionTimeout = etcdHeartbeatMS, etcdElectionMS
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	return pki.WriteFile(env.Path(etcdConfigFile), data, false)
}

// Certs: etcd's serving and peer certificates, which it loads at every
// handshake (go.etcd.io/etcd/client/pkg/transport), and the API server's
// client certificate to it, which the API server's etcd client loads at
// every handshake too (the same package), as do kiln's probe and node
// API and the etcd entry point's client of its peers.
func (Etcd) Certs(env *Env) []Cert {
	names := []string{"localhost", env.NodeName}
	return []Cert{
		{
			Name: "etcd serving", Users: "etcd (loads it at each handshake)",
			File: env.Path(etcdServerCert), KeyFile: env.Path(etcdServerKey),
			ca: etcdCA, req: pki.CertRequest{CommonName: env.NodeName, DNSNames: names, IPs: nodeIPs(env), Server: true, Client: true},
		},
		{
			Name: "etcd peer", Users: "etcd, to and from the other masters' etcd (loads it at each handshake)",
			File: env.Path(etcdPeerCert), KeyFile: env.Path(etcdPeerKey),
			ca: etcdCA, req: pki.CertRequest{CommonName: env.NodeName, DNSNames: names, IPs: nodeIPs(env), Server: true, Client: true},
		},
		{
			Name: "etcd client", Users: "kube-apiserver to etcd, etcd to its peers, kiln's etcd probe and node API (each loads it at each handshake)",
			File: env.Path(etcdClientCert), KeyFile: env.Path(etcdClientKey),
			ca: etcdCA, req: pki.CertRequest{CommonName: "kube-apiserver-etcd-client", Client: true},
		},
	}
}

// EtcdDataDir is etcd's data dir, DATA/etcd; the node API leaves a
// snapshot to restore and the reset marker beside it
// (etcdmember.Files).
func EtcdDataDir(env *Env) string { return env.Path("etcd") }

// Raft timing with several masters (see Prepare).
const (
	etcdHeartbeatMS = 500
	etcdElectionMS  = 5000
)

// Flags: etcd reads everything from its config file; extraArgs for etcd are
// not flags but are rejected by the embed entry point if unknown. With
// other masters, the entry point also gets their etcd: a master without
// data joins their cluster (see components/etcdmember.PlanStart), with
// the API server's etcd client certificate, which the etcd CA signed.
//
// Scheduled snapshots: a master with a state disk takes them into
// DATA/etcd-snapshots (controlPlane.snapshots); a diskless one is told
// the interval without a directory, and says once why it takes none.
func (Etcd) Flags(env *Env) map[string]string {
	flags := map[string]string{"config-file": env.Path(etcdConfigFile)}
	if snaps := env.Config.ControlPlane.Snapshots; snaps.Interval > 0 {
		flags["snapshot-interval"] = snaps.Interval.String()
		if env.Config.Storage.StateDisk != "" {
			flags["snapshot-dir"] = env.Path(EtcdSnapshotDir)
			flags["snapshot-keep"] = strconv.Itoa(snaps.Keep)
			flags["cluster-name"] = env.Cluster.Name
			flags["ca-hash"] = env.Cluster.CAHash
		}
	}
	peers := env.Config.PeerMasters()
	if len(peers) == 0 {
		return flags
	}
	urls := make([]string, len(peers))
	for i, p := range peers {
		// The peers' serving certificates carry their node address
		// (nodeIPs), which the client checks.
		urls[i] = "https://" + hostPort(p, env.Config.Ports.EtcdClient)
	}
	flags["peers"] = strings.Join(urls, ",")
	flags["bootstrap"] = strconv.FormatBool(env.Config.Bootstraps())
	flags["peer-client-cert"] = env.Path(etcdClientCert)
	flags["peer-client-key"] = env.Path(etcdClientKey)
	flags["peer-trusted-ca"] = env.Path(etcdCACert)
	return flags
}

// Ready is true only once this member votes and has a leader, and serves
// reads: the API server on this master uses this etcd alone, and a member
// that joined the cluster is a learner first, which refuses the API
// server's requests until it is promoted. It asks etcd's status (through
// the gRPC gateway) and /health with the API server's client certificate.
func (Etcd) Ready(ctx context.Context, env *Env) error {
	cert, err := tls.LoadX509KeyPair(env.Path(etcdClientCert), env.Path(etcdClientKey))
	if err != nil {
		return err
	}
	tlsConfig := &tls.Config{
		RootCAs:      caPool(env.Cluster.EtcdCA.CertPEM),
		Certificates: []tls.Certificate{cert},
		ServerName:   "localhost",
	}
	base := env.URL(env.Config.Ports.EtcdClient)
	status, _ := url.JoinPath(base, "v3/maintenance/status")
	if err := probeEtcdVoting(ctx, status, tlsConfig); err != nil {
		return err
	}
	health, _ := url.JoinPath(base, "health")
	return probeHTTPS(ctx, health, tlsConfig, `"health":"true"`)
}

// probeEtcdVoting POSTs an empty status request to etcd's gRPC gateway at
// url and wants a voting member with a leader. The gateway writes the
// StatusResponse as JSON with its proto field names; false and zero
// fields are left out (components/etcdmember's tests check a learner's).
func probeEtcdVoting(ctx context.Context, url string, tlsConfig *tls.Config) error {
	body, err := askHTTPS(ctx, http.MethodPost, url, "{}", tlsConfig)
	if err != nil {
		return err
	}
	var st struct {
		IsLearner bool   `json:"isLearner"`
		Leader    string `json:"leader"` // a uint64: a JSON string
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("%s: unexpected answer %q: %w", url, strings.TrimSpace(string(body)), err)
	}
	if st.IsLearner {
		return errors.New("etcd is a learner: it joined the cluster and votes once it has caught up with the leader and is promoted")
	}
	if st.Leader == "" || st.Leader == "0" {
		return errors.New("etcd has no leader: fewer than a quorum of the masters' etcd members answer")
	}
	return nil
}

func etcdServers(env *Env) string { return env.URL(env.Config.Ports.EtcdClient) }
