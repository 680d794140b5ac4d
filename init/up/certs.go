package up

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	"kiln/components"
	"kiln/configs/nodeapi"
	"kiln/internal/panics"
)

// renewer renews the certificates the node issues (components.NodeCerts)
// while it runs, once two thirds of each one's lifetime have passed: the
// files are rewritten in place, which their readers pick up by
// themselves; a component that could not (Cert.Restart) is restarted
// after, one at a time, each ready again before the next, so the node
// never restarts its components all at once. It also says on the
// console, once a day, when a CA nears its end (kiln does not renew
// CAs: README, "The cluster CA").
type renewer struct {
	env   *components.Env
	certs []components.Cert
	sup   restarter // the supervisor (etcdapi.go's interface)
	say   func(format string, args ...any)
	now   func() time.Time
	// readyWait bounds the wait for a restarted component.
	readyWait time.Duration
	// caSaid is when the CAs' end was last said.
	caSaid time.Time
}

// renewEvery is how often the renewer looks: a thirtieth of the
// certificates' lifetime (6 s for a test's 3 minutes), at most once a
// minute for a lifetime of days.
func renewEvery(validity time.Duration) time.Duration {
	return min(max(validity/30, 5*time.Second), time.Minute)
}

func (r *renewer) run(ctx context.Context, report func(string)) {
	t := time.NewTicker(renewEvery(components.CertValidity(r.env)))
	defer t.Stop()
	for {
		_ = panics.Do(report, "the certificate renewal", func() { r.pass(ctx) })
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pass renews what is due, then restarts what must be.
func (r *renewer) pass(ctx context.Context) {
	var restart []string
	for _, c := range r.certs {
		at, due := c.Due(r.env, r.now())
		if !due {
			continue
		}
		if err := c.Issue(r.env, true); err != nil {
			r.say("certificates: renewing %s (%s): %v; trying again", c.Name, c.File, err)
			continue
		}
		until := "?"
		if cert, err := components.ReadCert(c.File); err == nil {
			until = cert.NotAfter.UTC().Format(time.RFC3339)
		}
		r.say("certificates: renewed %s (due %s), valid until %s", c.Name, at.UTC().Format(time.RFC3339), until)
		if c.Restart != "" && !slices.Contains(restart, c.Restart) {
			restart = append(restart, c.Restart)
		}
	}
	for _, name := range restart {
		if err := r.sup.Restart(ctx, name); err != nil {
			r.say("certificates: restarting %s to read its renewed certificate: %v", name, err)
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, r.readyWait)
		err := r.sup.WaitReady(wctx, name)
		cancel()
		if err != nil {
			r.say("certificates: %s restarted with its renewed certificate, not ready: %v", name, err)
		}
	}
	r.sayCAs()
}

// sayCAs says, at most once a day, which CA ends within the half year, or
// sooner than the certificates' lifetime (then the certificates it
// signs end with it, ever sooner).
func (r *renewer) sayCAs() {
	now := r.now()
	if !r.caSaid.IsZero() && now.Sub(r.caSaid) < 24*time.Hour {
		return
	}
	horizon := max(180*24*time.Hour, components.CertValidity(r.env))
	for _, ca := range cas(r.env) {
		cert, err := components.ReadCert(ca.path)
		if err != nil || cert.NotAfter.Sub(now) > horizon {
			continue
		}
		r.say("certificates: WARNING: the %s ends on %s; kiln does not renew it, and the certificates it signs end with it (README, The cluster CA)",
			ca.name, cert.NotAfter.UTC().Format(time.RFC3339))
		r.caSaid = now
	}
}

type caFile struct{ name, path string }

// cas are the CAs' certificates the node has.
func cas(env *components.Env) []caFile {
	out := []caFile{{"cluster CA", env.Path("pki", "ca.crt")}}
	if env.Cluster.EtcdCA != nil {
		p := env.Cluster.Paths()
		out = append(out, caFile{"etcd CA", p.EtcdCACert}, caFile{"front-proxy CA", p.FrontProxyCACert})
	}
	return out
}

// nodeCerts lists every certificate the node uses: those it renews
// itself, those its kubelet rotates, and the CAs.
func nodeCerts(env *components.Env) nodeapi.Certs {
	out := nodeapi.Certs{Node: env.NodeName, Validity: components.CertValidity(env).String()}
	for _, c := range components.NodeCerts(env, components.For(&env.Config)) {
		x := describeCert(c.Name, c.File, nodeapi.RenewedByNode, c.Users)
		if x.Error == "" {
			x.RenewAt, _ = c.Due(env, time.Now())
		}
		out.Certs = append(out.Certs, x)
	}
	rotated := components.KubeletRotated(env)
	for _, name := range []string{"kubelet client", "kubelet serving"} {
		path, ok := rotated[name]
		if !ok {
			continue
		}
		users := "kubelet; kube-proxy, flannel, network-policy, api-lb (the node's kubeconfig names it)"
		if name == "kubelet serving" {
			users = "kubelet; the node API"
		}
		x := describeCert(name, path, nodeapi.RenewedByKubelet, users)
		if x.Error == "" {
			// The kubelet rotates at a random point between 70% and 90%
			// of the lifetime: the window's start.
			x.RenewAt = x.NotBefore.Add(x.NotAfter.Sub(x.NotBefore) * 7 / 10)
		}
		out.Certs = append(out.Certs, x)
	}
	for _, ca := range cas(env) {
		out.Certs = append(out.Certs, describeCert(ca.name, ca.path, nodeapi.RenewedByNobody, "every node (10 years from kiln gen cluster)"))
	}
	return out
}

func describeCert(name, path, by, users string) nodeapi.Cert {
	x := nodeapi.Cert{Name: name, Path: path, RenewedBy: by, Users: users}
	cert, err := components.ReadCert(path)
	if err != nil {
		x.Error = strings.TrimPrefix(err.Error(), path+": ")
		return x
	}
	x.Subject, x.Issuer = cert.Subject.String(), cert.Issuer.String()
	x.NotBefore, x.NotAfter = cert.NotBefore, cert.NotAfter
	return x
}

// serveCerts answers nodeapi.PathCerts.
func serveCerts(list func() nodeapi.Certs) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(list())
	}
}
