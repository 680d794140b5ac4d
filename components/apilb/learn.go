package apilb

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"kiln/pki"
)

// endpointSlicesPath lists the EndpointSlices of Service default/kubernetes:
// every API server publishes its advertised address and port there while
// it is up (and removes it when it shuts down).
const endpointSlicesPath = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=" +
	"kubernetes.io%2Fservice-name%3Dkubernetes"

// learnTimeout bounds one reading of the masters' list.
const learnTimeout = 10 * time.Second

// maxSliceList bounds the answer read (the list holds one address per
// master).
const maxSliceList = 4 << 20

// learnLoop reads the masters' list every LearnInterval once the
// kubeconfig exists (the join writes it; it is looked for every second
// until then), and makes its ready API servers the backends. A failure or
// an empty list keeps the backends as they are; the line about it is
// printed once, until the reason changes.
func (lb *LB) learnLoop(ctx context.Context) {
	if lb.o.Kubeconfig == "" {
		return
	}
	t := time.NewTicker(min(time.Second, lb.o.LearnInterval))
	defer t.Stop()
	var last time.Time
	said := ""
	for {
		if _, err := os.Stat(lb.o.Kubeconfig); err == nil && time.Since(last) >= lb.o.LearnInterval {
			last = time.Now()
			addrs, err := lb.learn(ctx)
			if err == nil && len(addrs) == 0 {
				err = errors.New("the kubernetes Service lists no ready API server")
			}
			if err != nil && ctx.Err() == nil {
				if msg := err.Error(); msg != said {
					said = msg
					lb.mu.Lock()
					lb.logf("cannot learn the masters from the cluster, the backends stay %s: %v", strings.Join(lb.active(), ", "), err)
					lb.mu.Unlock()
				}
			} else if err == nil {
				said = ""
				lb.setLearned(addrs)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// learn reads the ready API servers (HOST:PORT) from the cluster, through
// the LB itself (so through a backend that is up), with the node's
// credentials, verifying the server against the kubeconfig's CA under
// the name the kubeconfig's server has.
func (lb *LB) learn(ctx context.Context) ([]string, error) {
	server, cfg, err := pki.LoadKubeconfigTLS(lb.o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	if f := lb.o.ClientCert; f != "" {
		cert, err := tls.LoadX509KeyPair(f, f)
		switch {
		case err == nil:
			cfg.Certificates = []tls.Certificate{cert}
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("client certificate %s: %w", f, err)
		}
	}
	u, err := url.Parse(server)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%s: server %q is not https://HOST:PORT", lb.o.Kubeconfig, server)
	}
	cfg.ServerName = u.Hostname()
	self := lb.ln.Addr().String()
	var d net.Dialer
	hc := &http.Client{Timeout: learnTimeout, Transport: &http.Transport{
		TLSClientConfig:   cfg,
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, self)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+u.Host+endpointSlicesPath, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSliceList))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("listing the kubernetes Service's EndpointSlices: %s: %s", resp.Status, strings.TrimSpace(string(body[:min(len(body), 512)])))
	}
	return parseEndpointSlices(body)
}

// endpointSliceList is the part of a discovery.k8s.io/v1 EndpointSliceList
// read here.
type endpointSliceList struct {
	Items []struct {
		AddressType string `json:"addressType"`
		Endpoints   []struct {
			Addresses  []string `json:"addresses"`
			Conditions struct {
				Ready *bool `json:"ready"`
			} `json:"conditions"`
		} `json:"endpoints"`
		Ports []struct {
			Name     *string `json:"name"`
			Port     *int32  `json:"port"`
			Protocol *string `json:"protocol"`
		} `json:"ports"`
	} `json:"items"`
}

// parseEndpointSlices returns the ready endpoints' HOST:PORT: each IP
// address of a ready endpoint (a missing ready condition means ready, as
// the API says) with the slice's TCP port named https, or its only TCP
// port.
func parseEndpointSlices(data []byte) ([]string, error) {
	var l endpointSliceList
	if err := json.Unmarshal(data, &l); err != nil {
		return nil, fmt.Errorf("reading the kubernetes Service's EndpointSlices: %w", err)
	}
	var out []string
	for _, s := range l.Items {
		if s.AddressType != "IPv4" && s.AddressType != "IPv6" {
			continue
		}
		var ports []int32
		for _, p := range s.Ports {
			if p.Port == nil || (p.Protocol != nil && *p.Protocol != "TCP") {
				continue
			}
			if p.Name != nil && *p.Name == "https" {
				ports = []int32{*p.Port}
				break
			}
			ports = append(ports, *p.Port)
		}
		if len(ports) != 1 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				if net.ParseIP(a) == nil {
					continue
				}
				out = append(out, net.JoinHostPort(a, strconv.Itoa(int(ports[0]))))
			}
		}
	}
	return dedupe(out), nil
}
