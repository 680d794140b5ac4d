package up

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"kiln/components"
	"kiln/configs/nodeapi"
	"kiln/internal/nodeclient"
)

// PowerFunc asks PID 1 to reboot (reboot true) or power off the node the
// clean way, as the ACPI power button does: stop the components, unmount,
// then reboot or power off. It returns at once; why is for the console.
type PowerFunc func(reboot bool, why string)

// operator is what the operator's paths of the node API act on (kiln
// logs, dmesg, reboot, shutdown, reset --node; nodeapi.PathDmesg...).
type operator struct {
	nodeName string
	// power is nil on a node PID 1 does not run (kiln-node up on a
	// host): it has no machine to reboot.
	power PowerFunc
	// powerDelay lets the 202 reach the client before the node goes down.
	powerDelay time.Duration
	// kmsg opens the kernel's message buffer for reading, non-blocking
	// (a read with nothing left fails with EAGAIN).
	kmsg func() (io.ReadCloser, error)
	// dataDir is on the state disk; diskless: it is in RAM (reset
	// refuses).
	dataDir  string
	diskless bool
	// relay is a client of the other nodes' node APIs, with this
	// master's admin-group certificate; nil on a worker.
	relay func() (*nodeclient.Client, error)
	// certs lists the node's certificates (kiln certs --node).
	certs func() nodeapi.Certs
}

// operatorOf is the node's operator.
func operatorOf(env *components.Env, power PowerFunc) *operator {
	op := &operator{
		nodeName:   env.NodeName,
		power:      power,
		powerDelay: 500 * time.Millisecond,
		kmsg:       openKmsg,
		dataDir:    env.DataDir,
		diskless:   env.Config.Storage.StateDisk == "",
		certs:      func() nodeapi.Certs { return nodeCerts(env) },
	}
	if cert, key, ok := components.NodeAPIClientFiles(env); ok {
		ca := env.Path("pki", "ca.crt")
		op.relay = func() (*nodeclient.Client, error) { return nodeclient.FromFiles(cert, key, ca) }
	}
	return op
}

// withOperator serves the operator's paths and hands the rest to h. The
// authorization (the admin group only) is authorize's: none of these
// paths is a volume request.
func withOperator(op *operator, h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("GET "+nodeapi.PathDmesg, op.dmesg)
	mux.HandleFunc("POST "+nodeapi.PathReboot, func(w http.ResponseWriter, r *http.Request) { op.powerOff(w, true, "kiln reboot") })
	mux.HandleFunc("POST "+nodeapi.PathShutdown, func(w http.ResponseWriter, r *http.Request) { op.powerOff(w, false, "kiln shutdown") })
	mux.HandleFunc("POST "+nodeapi.PathReset, op.reset)
	mux.HandleFunc(nodeapi.PathRelay+"{name}/{addr}/{rest...}", op.relayTo)
	mux.HandleFunc("GET "+nodeapi.PathCerts, serveCerts(op.certs))
	return mux
}

// openKmsg opens /dev/kmsg non-blocking with raw system calls: an
// *os.File would hand the descriptor to Go's poller, which waits at
// EAGAIN instead of returning it, and the read would never end.
func openKmsg() (io.ReadCloser, error) {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/dev/kmsg", Err: err}
	}
	return rawFD(fd), nil
}

type rawFD int

func (f rawFD) Read(p []byte) (int, error) {
	n, err := unix.Read(int(f), p)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (f rawFD) Close() error { return unix.Close(int(f)) }

// maxDmesg caps the answer: the kernel's buffer is rarely over 1 MiB.
const maxDmesg = 8 << 20

func (op *operator) dmesg(w http.ResponseWriter, r *http.Request) {
	if op.kmsg == nil {
		http.Error(w, "this node cannot read the kernel's messages", http.StatusNotImplemented)
		return
	}
	f, err := op.kmsg()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	out, err := readKmsg(f, maxDmesg)
	if err != nil && len(out) == 0 {
		http.Error(w, "/dev/kmsg: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(out)
}

// readKmsg reads /dev/kmsg's records (one a read) until none is left
// (EAGAIN) or limit bytes, each as "[SECONDS.MICROS] message". A record
// overwritten while read (EPIPE) is skipped.
func readKmsg(r io.Reader, limit int) ([]byte, error) {
	var out bytes.Buffer
	buf := make([]byte, 8192) // a record is at most 1 KiB and its dictionary
	for out.Len() < limit {
		n, err := r.Read(buf)
		switch {
		case errors.Is(err, unix.EPIPE):
			continue
		case errors.Is(err, unix.EAGAIN), errors.Is(err, io.EOF):
			return out.Bytes(), nil
		case err != nil:
			return out.Bytes(), err
		}
		out.WriteString(formatKmsg(buf[:n]))
	}
	return out.Bytes(), nil
}

// formatKmsg turns one record, "PRIO,SEQ,USEC,FLAGS[,...];MESSAGE\n"
// with dictionary lines (" KEY=VALUE") after it, into "[SEC.USEC]
// MESSAGE\n".
func formatKmsg(rec []byte) string {
	head, msg, ok := bytes.Cut(rec, []byte{';'})
	if !ok {
		return string(bytes.TrimRight(rec, "\n")) + "\n"
	}
	msg, _, _ = bytes.Cut(msg, []byte{'\n'})
	f := strings.Split(string(head), ",")
	ts := ""
	if len(f) >= 3 {
		if us, err := strconv.ParseUint(f[2], 10, 64); err == nil {
			ts = fmt.Sprintf("[%5d.%06d] ", us/1e6, us%1e6)
		}
	}
	return ts + string(msg) + "\n"
}

// powerOff answers 202, then asks PID 1 to reboot or power off.
func (op *operator) powerOff(w http.ResponseWriter, reboot bool, why string) {
	if op.power == nil {
		http.Error(w, "this node is not run by kiln's PID 1 (kiln-node up on a host): stop it where it runs", http.StatusNotImplemented)
		return
	}
	what := "powering off"
	if reboot {
		what = "rebooting"
	}
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, "node %s: %s (the components stop first, then the disks are unmounted)\n", op.nodeName, what)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	time.AfterFunc(op.powerDelay, func() { op.power(reboot, why) })
}

// reset marks the state disk to be formatted at the next boot and
// reboots (nodeapi.PathReset).
func (op *operator) reset(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 256))
	if got := strings.TrimSpace(string(body)); got != op.nodeName {
		http.Error(w, fmt.Sprintf("reset wipes this node's state disk: send its name, %s, to confirm (got %q)", op.nodeName, got), http.StatusBadRequest)
		return
	}
	if op.power == nil {
		http.Error(w, "this node is not run by kiln's PID 1 (kiln-node up on a host): remove its data directory yourself", http.StatusNotImplemented)
		return
	}
	if op.diskless {
		http.Error(w, fmt.Sprintf("node %s is diskless: its state is in RAM and a reboot forgets it (use reboot)", op.nodeName), http.StatusConflict)
		return
	}
	if err := markReset(op.dataDir); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, "node %s: its state disk will be formatted at the next boot; rebooting\n", op.nodeName)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	time.AfterFunc(op.powerDelay, func() { op.power(true, "kiln reset") })
}

// markReset writes the reset marker on the state disk and syncs it, so
// that a power cut on the way down still leaves it.
func markReset(dataDir string) error {
	p := filepath.Join(dataDir, nodeapi.ResetMarker)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("marking the reset: %w", err)
	}
	_, err = f.WriteString(time.Now().UTC().Format(time.RFC3339) + "\n")
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("marking the reset: %w", err)
	}
	return nil
}

// nodeNameRE is a node's name: a DNS name, lower case.
var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// relayedHeaders are the request headers a relay passes on.
var relayedHeaders = []string{"Content-Type", "Content-Length", "Accept"}

// relayTo sends the request on to another node's node API
// (nodeapi.PathRelay) and streams its answer back.
func (op *operator) relayTo(w http.ResponseWriter, r *http.Request) {
	if op.relay == nil {
		http.Error(w, "only a master relays to other nodes", http.StatusNotFound)
		return
	}
	name, addr, rest := r.PathValue("name"), r.PathValue("addr"), r.PathValue("rest")
	if !nodeNameRE.MatchString(name) || len(name) > 253 {
		http.Error(w, fmt.Sprintf("relay: %q is not a node name", name), http.StatusBadRequest)
		return
	}
	ip := net.ParseIP(addr)
	if ip == nil {
		http.Error(w, fmt.Sprintf("relay: %q is not an IP address", addr), http.StatusBadRequest)
		return
	}
	if strings.HasPrefix("/"+rest, nodeapi.PathRelay) {
		http.Error(w, "relay: a relay does not relay again", http.StatusBadRequest)
		return
	}
	client, err := op.relay()
	if err != nil {
		http.Error(w, "relay: this master's credentials: "+err.Error(), http.StatusInternalServerError)
		return
	}
	path := "/" + rest
	if r.URL.RawQuery != "" {
		path += "?" + r.URL.RawQuery
	}
	h := http.Header{}
	for _, k := range relayedHeaders {
		if v, ok := r.Header[k]; ok {
			h[k] = v
		}
	}
	t := nodeclient.Target{Addr: net.JoinHostPort(ip.String(), strconv.Itoa(nodeapi.Port)), Name: name}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	resp, err := client.Do(ctx, t, r.Method, path, r.Body, h)
	if err != nil {
		http.Error(w, fmt.Sprintf("relay from %s: %v", op.nodeName, err), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	copyFlushing(w, resp.Body)
}

// copyFlushing copies r to w, flushing after every read: a followed log
// reaches the client line by line.
func copyFlushing(w http.ResponseWriter, r io.Reader) {
	f, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if f != nil {
				f.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}
