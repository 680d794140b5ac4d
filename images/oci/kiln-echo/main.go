// Command kiln-echo is the small workload kiln's image carries for trying a
// cluster out and for its tests: an HTTP server that answers with the pod's
// name and address, and client sub-commands to run with `kubectl exec`, so
// the image needs no shell.
//
//	kiln-echo serve [-listen :8080]   answer "NAME ADDRESS" on every path
//	kiln-echo get URL                 print the body of URL (exit 1 on error)
//	kiln-echo lookup NAME             print NAME's addresses (exit 1 on error)
//	kiln-echo pkill TEXT              SIGKILL every process whose command line
//	                                  contains TEXT (in a hostPID pod: a node's
//	                                  components, for fault tests)
//	kiln-echo cat FILE                print FILE (in a debug pod: a node's
//	                                  logs through a hostPath, /proc/1/net/tcp)
//	kiln-echo write FILE TEXT         write TEXT to FILE and sync it (a
//	                                  volume's data, for storage tests)
//	kiln-echo webhook -cert F -key F [-listen :8443]
//	                                  a validating admission webhook over
//	                                  TLS: it denies objects labelled
//	                                  kiln.dev/deny=true, allows the rest
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		listen := fs.String("listen", ":8080", "address to listen on")
		fs.Parse(os.Args[2:])
		os.Exit(serve(*listen))
	case "get":
		if len(os.Args) != 3 {
			usage()
		}
		os.Exit(get(os.Args[2]))
	case "pkill":
		if len(os.Args) != 3 {
			usage()
		}
		os.Exit(pkill(os.Args[2]))
	case "lookup":
		if len(os.Args) != 3 {
			usage()
		}
		os.Exit(lookup(os.Args[2]))
	case "cat":
		if len(os.Args) != 3 {
			usage()
		}
		os.Exit(cat(os.Args[2]))
	case "write":
		if len(os.Args) != 4 {
			usage()
		}
		os.Exit(write(os.Args[2], os.Args[3]))
	case "webhook":
		fs := flag.NewFlagSet("webhook", flag.ExitOnError)
		listen := fs.String("listen", ":8443", "address to listen on")
		cert := fs.String("cert", "", "serving certificate (PEM)")
		key := fs.String("key", "", "its private key (PEM)")
		fs.Parse(os.Args[2:])
		if *cert == "" || *key == "" {
			usage()
		}
		os.Exit(webhook(*listen, *cert, *key))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kiln-echo serve [-listen :8080] | get URL | lookup NAME | pkill TEXT | cat FILE | write FILE TEXT | webhook -cert F -key F [-listen :8443]")
	os.Exit(2)
}

func serve(listen string) int {
	name, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		local := "?"
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			local, _, _ = net.SplitHostPort(a.String())
		}
		fmt.Fprintf(w, "%s %s\n", name, local)
		fmt.Fprintf(os.Stdout, "%s %s %s from %s\n", time.Now().UTC().Format(time.RFC3339), r.Method, r.URL.Path, r.RemoteAddr)
	})
	srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	fmt.Fprintf(os.Stdout, "kiln-echo %s listening on %s\n", name, listen)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "kiln-echo:", err)
		return 1
	}
	return 0
}

func get(url string) int {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kiln-echo:", err)
		return 1
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-echo:", err)
		return 1
	}
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, "kiln-echo:", resp.Status)
		return 1
	}
	return 0
}

func lookup(name string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kiln-echo:", err)
		return 1
	}
	fmt.Println(strings.Join(addrs, " "))
	return 0
}

func pkill(text string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		fmt.Fprintln(os.Stderr, "kiln-echo:", err)
		return 1
	}
	self := os.Getpid()
	killed := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		cmd := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		if strings.Contains(cmd, text) {
			if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
				fmt.Printf("killed %d %s\n", pid, cmd)
				killed++
			}
		}
	}
	if killed == 0 {
		fmt.Fprintf(os.Stderr, "kiln-echo: no process matches %q\n", text)
		return 1
	}
	return 0
}

func cat(path string) int {
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	if _, err := io.Copy(os.Stdout, f); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func write(path, text string) int {
	f, err := os.Create(path)
	if err == nil {
		_, err = f.WriteString(text)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kiln-echo:", err)
		return 1
	}
	return 0
}

// denyLabel marks the objects the webhook denies.
const denyLabel = "kiln.dev/deny"

// admissionReview is the part of admission.k8s.io/v1 AdmissionReview the
// webhook reads and writes (the image carries no Kubernetes libraries).
type admissionReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		UID    string `json:"uid"`
		Object struct {
			Metadata struct {
				Name   string            `json:"name"`
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		} `json:"object"`
	} `json:"request,omitempty"`
	Response *admissionResponse `json:"response,omitempty"`
}

type admissionResponse struct {
	UID     string `json:"uid"`
	Allowed bool   `json:"allowed"`
	Status  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"status,omitempty"`
}

// webhook serves a validating admission webhook: the API server calls it
// through a Service, so a test sees the API server reach a pod.
func webhook(listen, cert, key string) int {
	srv := &http.Server{Addr: listen, Handler: webhookHandler(), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(os.Stdout, "kiln-echo webhook listening on %s\n", listen)
	if err := srv.ListenAndServeTLS(cert, key); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-echo:", err)
		return 1
	}
	return 0
}

// webhookHandler answers AdmissionReviews on POST /validate.
func webhookHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /validate", func(w http.ResponseWriter, r *http.Request) {
		var rev admissionReview
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&rev); err != nil || rev.Request == nil {
			http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
			return
		}
		obj := rev.Request.Object.Metadata
		resp := &admissionResponse{UID: rev.Request.UID, Allowed: obj.Labels[denyLabel] != "true"}
		if !resp.Allowed {
			resp.Status = &struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}{http.StatusForbidden, fmt.Sprintf("kiln-echo webhook denies %s: it is labelled %s=true", obj.Name, denyLabel)}
		}
		fmt.Fprintf(os.Stdout, "%s webhook %s allowed=%v\n", time.Now().UTC().Format(time.RFC3339), obj.Name, resp.Allowed)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(admissionReview{APIVersion: rev.APIVersion, Kind: rev.Kind, Response: resp})
	})
	return mux
}
