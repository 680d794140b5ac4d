package main

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"kiln/configs/cluster"
	"kiln/internal/bounded"
	"kiln/pki"
)

func genCommand() *cobra.Command {
	gen := groupCommand(&cobra.Command{
		Use:   "gen",
		Short: "Generate kiln's files (cluster directories)",
		Long: `Generate the files kiln builds from.

  kiln gen cluster   a cluster directory: CAs, keys, bootstrap token, admin kubeconfig
  kiln gen token     another bootstrap token, with an expiry, for a batch of workers`,
	})
	gen.AddCommand(genClusterCommand(), genTokenCommand())
	return gen
}

func genTokenCommand() *cobra.Command {
	var (
		ttl         time.Duration
		description string
		clusterDir  string
	)
	c := &cobra.Command{
		Use:   "token",
		Short: "Generate a bootstrap token for a batch of workers, as a Secret to apply",
		Long: `Generate a bootstrap token apart from the cluster directory's own (which never
expires), for one batch of workers, and print it as the Kubernetes Secret
that makes the API server accept it. Apply it, build the batch's worker image
with it, and it stops working at its expiry or when the Secret is deleted:

  kiln gen token --ttl 24h > token.yaml
  kubectl --kubeconfig out/cluster/admin.kubeconfig apply -f token.yaml
  kiln build --role worker --format pxe --token <id>.<secret>   (first line of token.yaml)

A diskless worker joins again at every boot: once its token is gone it
cannot come back after a reboot. Give such workers a token that lasts, or a
state disk. The cluster directory is read only to print the kubeconfig path.`,
		Example: `  kiln gen token --ttl 2h --description "rack 3, 2026-12-01" > rack3-token.yaml`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if ttl < 0 {
				return usageError{fmt.Errorf("--ttl %v: want a duration such as 24h, or 0 for a token that never expires", ttl)}
			}
			if ttl > 0 && ttl < time.Minute {
				return usageError{fmt.Errorf("--ttl %v: want at least 1m (or 0: never expires)", ttl)}
			}
			tok, err := cluster.NewBatchToken(ttl, description, time.Now())
			if err != nil {
				return err
			}
			_, err = c.OutOrStdout().Write(tok.SecretYAML(filepath.Join(clusterDir, cluster.AdminKubeconfigFile)))
			return err
		},
	}
	f := c.Flags()
	f.DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is accepted (0: never expires)")
	f.StringVar(&description, "description", "kiln gen token: a batch of workers", "the Secret's description")
	f.StringVar(&clusterDir, "cluster", defaultClusterDir, "cluster directory (for the kubectl line only)")
	return c
}

func genClusterCommand() *cobra.Command {
	opts := cluster.Options{}
	out := "out/cluster"
	vip := ""
	c := &cobra.Command{
		Use:   "cluster",
		Short: "Generate a cluster directory: the cluster's CAs, keys and admin kubeconfig",
		Long: `Generate a cluster directory, the identity of one cluster:

  cluster.yaml                  name, API endpoint, service and pod ranges, CA hash
  admin.kubeconfig              cluster-admin client certificate (system:masters)
  pki/ca.{crt,key}              cluster CA
  pki/etcd/ca.{crt,key}         etcd CA
  pki/front-proxy-ca.{crt,key}  front-proxy CA
  pki/sa.{key,pub}              service-account signing key
  secrets/encryption.key        Secrets encryption at rest
  secrets/bootstrap-token       for joining workers

Keys and secrets are mode 0600 in 0700 directories. Every node built from the
directory trusts its CAs, so kiln refuses to overwrite a cluster unless
--force is given (which invalidates every node built from the old one).

The endpoint is where nodes and clients reach the API server: the master's
address, or a load balancer or DNS name in front of the masters, or the
masters' virtual IP (--vip: the endpoint is then VIP:6443, and every node's
config gives the same address as controlPlane.vip).`,
		Example: `  kiln gen cluster
  kiln gen cluster --name prod --out clusters/prod --endpoint 192.168.1.10:6443
  kiln gen cluster --name prod --out clusters/prod --vip 192.168.1.5`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if vip != "" {
				ep, err := vipEndpoint(vip, opts.Endpoint, c.Flags().Changed("endpoint"))
				if err != nil {
					return usageError{err}
				}
				opts.Endpoint = ep
			}
			if err := genCluster(c.OutOrStdout(), c.ErrOrStderr(), out, opts); err != nil {
				return err
			}
			if vip != "" {
				fmt.Fprintf(c.OutOrStdout(), "virtual IP %s: give every node's config controlPlane.vip: %s (the masters hold it in turn)\n", vip, vip)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&opts.Name, "name", "kiln", "cluster name (a DNS label: a-z, 0-9, '-')")
	f.StringVarP(&out, "out", "o", out, "cluster directory to write")
	f.StringVar(&opts.Endpoint, "endpoint", strings.TrimPrefix(cluster.DefaultEndpoint, "https://"),
		"API server endpoint, HOST:PORT or https://HOST:PORT")
	f.BoolVar(&opts.Force, "force", false, "overwrite the cluster already in --out (invalidates every node built from it)")
	f.StringVar(&opts.ServiceCIDR, "service-cidr", cluster.DefaultServiceCIDR, "service IP range")
	f.StringVar(&opts.PodCIDR, "pod-cidr", cluster.DefaultPodCIDR, "pod IP range")
	f.StringVar(&vip, "vip", "", "the masters' virtual IP (controlPlane.vip), an IPv4 address: the endpoint becomes VIP:6443")
	return c
}

// vipEndpoint is the cluster's endpoint with a virtual IP: VIP:6443, or
// --endpoint when it names the VIP (another port); another host is a
// mistake, not something to choose between.
func vipEndpoint(vip, endpoint string, endpointGiven bool) (string, error) {
	ip, err := netip.ParseAddr(vip)
	if err != nil || !ip.Is4() {
		return "", fmt.Errorf("--vip %s: want an IPv4 address (a free address on the masters' network, e.g. 192.168.1.5)", bounded.Quote(vip))
	}
	if !endpointGiven {
		return net.JoinHostPort(ip.String(), "6443"), nil
	}
	ep, err := cluster.NormalizeEndpoint(endpoint)
	if err != nil {
		return "", err
	}
	host, _, _ := net.SplitHostPort(strings.TrimPrefix(ep, "https://"))
	if h, err := netip.ParseAddr(host); err != nil || h != ip {
		return "", fmt.Errorf("--endpoint %s and --vip %s: with a virtual IP the endpoint is the VIP (drop --endpoint, or give --endpoint %s:PORT)", endpoint, vip, ip)
	}
	return ep, nil
}

func genCluster(stdout, stderr io.Writer, dir string, opts cluster.Options) error {
	_, err := os.Stat(filepath.Join(dir, cluster.ConfigFile))
	replacing := !errors.Is(err, fs.ErrNotExist)
	cl, err := cluster.Generate(dir, opts)
	if err != nil {
		return err
	}
	if replacing {
		fmt.Fprintf(stderr, "kiln: replaced the cluster in %s: nodes built from the old one no longer trust it\n", dir)
	}
	fmt.Fprintf(stdout, "generated cluster %s in %s\n", cl.Name, dir)
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	p := func(rel, format string, a ...any) {
		fmt.Fprintf(w, "  %s\t%s\n", filepath.Join(dir, rel), fmt.Sprintf(format, a...))
	}
	p(cluster.ConfigFile, "endpoint %s, services %s, pods %s, DNS %s",
		cl.Endpoint, cl.ServiceCIDR, cl.PodCIDR, cl.ClusterDNS)
	p(cluster.AdminKubeconfigFile, "cluster-admin (%s, group %s)%s",
		cluster.AdminUser, cluster.AdminGroup, adminExpiry(filepath.Join(dir, cluster.AdminKubeconfigFile)))
	p("pki/ca.{crt,key}", "cluster CA %s, valid until %s", cl.CA.Cert.Subject.CommonName, day(cl.CA.Cert.NotAfter))
	p("pki/etcd/ca.{crt,key}", "etcd CA %s", cl.EtcdCA.Cert.Subject.CommonName)
	p("pki/front-proxy-ca.{crt,key}", "front-proxy CA %s", cl.FrontProxyCA.Cert.Subject.CommonName)
	p("pki/sa.{key,pub}", "service-account signing key (%s)", keyType(cl))
	p(cluster.EncryptionKeyFile, "Secrets encryption key (%d bytes)", len(cl.EncryptionKey))
	p(cluster.BootstrapTokenFile, "bootstrap token %s.<secret>, for joining workers", cl.BootstrapTokenID())
	w.Flush()
	fmt.Fprintf(stdout, "CA hash: %s\n", cl.CAHash)
	fmt.Fprintf(stdout, "once a master runs: kubectl --kubeconfig %s get nodes\n",
		filepath.Join(dir, cluster.AdminKubeconfigFile))
	return nil
}

func day(t time.Time) string { return t.UTC().Format("2006-01-02") }

// adminExpiry is ", valid until DAY" for the admin kubeconfig's certificate.
func adminExpiry(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	kc, err := pki.ParseKubeconfig(data)
	if err != nil {
		return ""
	}
	cert, err := pki.ParseCertPEM(kc.CertPEM)
	if err != nil {
		return ""
	}
	return ", valid until " + day(cert.NotAfter)
}

func keyType(cl *cluster.Cluster) string {
	switch k := cl.ServiceAccountKey.Public().(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	default:
		return fmt.Sprintf("%T", k)
	}
}
