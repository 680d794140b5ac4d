package supervisor

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
)

// Handler serves the supervisor's state for `kiln-node status` and `logs`:
//
//	GET /status        Status() as JSON
//	GET /logs/<name>   the service's recent output as text, or the tail of a
//	                   LogFiles file; 404 for an unknown name
//
// It has no authentication: serve it only where the caller is trusted (the
// node serves it on a root-only unix socket).
func (s *Supervisor) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Status())
	})
	mux.HandleFunc("GET /logs/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		lines, ok := s.Logs(name)
		if !ok {
			if path, ok := s.opts.LogFiles[name]; ok {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				tail, err := fileTail(path, MaxLogFileTail)
				if err != nil {
					http.Error(w, err.Error(), http.StatusNotFound)
					return
				}
				_, _ = w.Write(tail)
				return
			}
			http.Error(w, "no service or log named "+name, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		var b strings.Builder
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
		_, _ = w.Write([]byte(b.String()))
	})
	return mux
}

// fileTail returns the last limit bytes of a file, from the first whole line.
func fileTail(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(fi.Size()-limit, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return nil, err
	}
	if off > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return b, nil
}
