package pxe

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"time"

	"kiln/configs/image"
	"kiln/configs/node"
)

// Handler serves, over HTTP:
//
//	/boot.ipxe?mac=M    the iPXE script of machine M (without mac: a
//	                    script that asks again with ${netX/mac})
//	/ipxe/M             the same script
//	/images/ROLE/FILE   vmlinuz and initramfs.img of the ROLE image, to
//	                    machines of that role only
//	/config/M.yaml      machine M's node config (kiln.config=), with its
//	                    nodeSecret, to M only
//
// M is a MAC address (52:54:00:12:34:56 or 52-54-00-12-34-56). Every
// request is logged with the machine's MAC address when known. An image
// file or a config the client may not have (see the package doc, "Who gets
// what") is answered 403 and logged as a warning with the reason.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /boot.ipxe", s.serveBootIPXE)
	mux.HandleFunc("GET /ipxe/{mac}", func(w http.ResponseWriter, r *http.Request) {
		s.serveScript(w, r, r.PathValue("mac"))
	})
	mux.HandleFunc("GET /images/{role}/{file}", s.serveImageFile)
	mux.HandleFunc("GET /config/{file}", s.serveConfig)
	return s.logHTTP(mux)
}

// httpRecord is the response writer of one logged request.
type httpRecord struct {
	http.ResponseWriter
	status int
	bytes  int64
	mac    string
	note   string
}

func (h *httpRecord) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
	h.ResponseWriter.WriteHeader(code)
}

func (h *httpRecord) Write(b []byte) (int, error) {
	if h.status == 0 {
		h.status = http.StatusOK
	}
	n, err := h.ResponseWriter.Write(b)
	h.bytes += int64(n)
	return n, err
}

// record returns the request's log record, to set its MAC address.
func record(w http.ResponseWriter) *httpRecord {
	if h, ok := w.(*httpRecord); ok {
		return h
	}
	return &httpRecord{}
}

func (s *Server) logHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &httpRecord{ResponseWriter: w}
		client := remoteIP(r)
		defer func() {
			if rec.mac == "" {
				rec.mac = s.macString(client)
			}
			attrs := []any{"client", client.String(), "mac", rec.mac, "method", r.Method, "path", r.URL.RequestURI(),
				"status", rec.status, "bytes", rec.bytes, "duration", time.Since(start).Round(time.Millisecond)}
			if rec.note != "" {
				attrs = append(attrs, "note", rec.note)
			}
			if rec.status >= 400 {
				s.log.Warn("http", attrs...)
			} else {
				s.log.Info("http", attrs...)
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

func remoteIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// hostRE is what a Host header may be to go into a script: a name or an
// address, and a port.
var hostRE = regexp.MustCompile(`^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$`)

// baseURL is the server's URL as the client reached it, so that the
// script works through port forwards; the server's own address otherwise.
func (s *Server) baseURL(r *http.Request) string {
	if hostRE.MatchString(r.Host) {
		return "http://" + r.Host
	}
	return s.BaseURL()
}

// lookupHTTP finds the machine of a MAC address in a request, answering
// the request itself when there is none.
func (s *Server) lookupHTTP(w http.ResponseWriter, r *http.Request, macText string) (Machine, bool) {
	rec := record(w)
	mac, err := ParseMAC(macText)
	if err != nil {
		rec.note = "bad MAC address"
		http.Error(w, err.Error(), http.StatusBadRequest)
		return Machine{}, false
	}
	rec.mac = mac.String()
	m, ok := s.machines.Lookup(mac)
	if !ok {
		rec.note = "refused: unknown MAC address, no default in " + s.machines.Source
		http.Error(w, "unknown machine "+mac.String(), http.StatusNotFound)
		return Machine{}, false
	}
	return m, true
}

func (s *Server) serveBootIPXE(w http.ResponseWriter, r *http.Request) {
	if mac := r.URL.Query().Get("mac"); mac != "" {
		s.serveScript(w, r, mac)
		return
	}
	// No MAC given: have iPXE ask again with the MAC of the interface it
	// booted from.
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "#!ipxe\n# kiln pxe: ask for this machine's own script\nchain %s/boot.ipxe?mac=${netX/mac}\n", s.baseURL(r))
}

// Script is the iPXE script that boots machine m from the server at base
// (http://host:port).
func (s *Server) Script(base string, m Machine) (string, error) {
	img, ok := s.images[m.Role]
	if !ok {
		return "", fmt.Errorf("no %s image", m.Role)
	}
	imgURL := base + "/images/" + string(img.Role)
	cmdline := append(append([]string{"initrd=" + initramfsFile}, img.Cmdline...),
		image.Arg(image.ParamBoot, image.BootPXE), image.Arg(image.ParamConfig, base+"/config/"+macPath(m.MAC)+".yaml"))
	src := "listed in " + s.machines.Source
	if m.Default {
		src = "default of " + s.machines.Source
	}
	// initrd= on the kernel line is what a UEFI iPXE needs to hand the
	// initramfs to the kernel's EFI stub; BIOS ignores it.
	return fmt.Sprintf(`#!ipxe
# kiln pxe: %s is %s (%s), %s image %s
echo kiln: booting %s (%s image %s) from %s
kernel %s/%s %s || goto failed
initrd %s/%s || goto failed
boot || goto failed
:failed
echo kiln: boot failed, trying again in 10 seconds
sleep 10
chain %s/ipxe/%s
`, m.MAC, m.Hostname, src, img.Role, img.ID,
		m.Hostname, img.Role, img.ID, base,
		imgURL, kernelFile, strings.Join(cmdline, " "),
		imgURL, initramfsFile,
		base, macPath(m.MAC)), nil
}

func (s *Server) serveScript(w http.ResponseWriter, r *http.Request, macText string) {
	m, ok := s.lookupHTTP(w, r, macText)
	if !ok {
		return
	}
	script, err := s.Script(s.baseURL(r), m)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	rec := record(w)
	rec.note = m.Hostname + " " + string(m.Role)
	if other := s.claimClient(remoteIP(r), m.MAC); other != nil {
		rec.note += fmt.Sprintf("; %s stays %s's (from DHCP): its image files go to that machine only", remoteIP(r), other)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprint(w, script)
}

// forbid answers 403 to a request for a file the client may not have; the
// reason goes to the log only.
func forbid(w http.ResponseWriter, reason string) {
	record(w).note = "refused: " + reason
	http.Error(w, "forbidden: not served to this machine (the server's log says why)", http.StatusForbidden)
}

func (s *Server) serveImageFile(w http.ResponseWriter, r *http.Request) {
	img, ok := s.images[node.Role(r.PathValue("role"))]
	if !ok {
		http.Error(w, "no such image", http.StatusNotFound)
		return
	}
	p := img.file(r.PathValue("file"))
	if p == "" {
		http.Error(w, "no such file (an image serves "+kernelFile+" and "+initramfsFile+")", http.StatusNotFound)
		return
	}
	if ok, reason := s.allowImage(remoteIP(r), img.Role); !ok {
		forbid(w, reason)
		return
	}
	f, err := os.Open(p)
	if err != nil {
		http.Error(w, "cannot open the file", http.StatusInternalServerError)
		s.log.Error("http: image file", "file", p, "error", err.Error())
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		http.Error(w, "cannot read the file", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

func (s *Server) serveConfig(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutSuffix(r.PathValue("file"), ".yaml")
	if !ok {
		http.Error(w, "want /config/<mac>.yaml", http.StatusNotFound)
		return
	}
	mac, err := ParseMAC(name)
	if err != nil {
		record(w).note = "bad MAC address"
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	m, ok := s.machines.Lookup(mac)
	if !ok {
		forbid(w, s.refusedReason(mac))
		return
	}
	// A node asks for its config from the address it got at boot, which
	// DHCP may not have shown this server: the request ties the address
	// to the machine unless DHCP tied it to another.
	s.claimClient(remoteIP(r), m.MAC)
	if ok, reason := s.allowConfig(remoteIP(r), m); !ok {
		forbid(w, reason)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Cache-Control", "no-store")
	// The document holds the machine's nodeSecret: it goes to the
	// machine only, never to the log.
	m.NodeSecret = Secret(s.NodeSecret(m))
	w.Write(m.ConfigYAML(s.cfg.Router, s.cfg.DNS))
}
