package supervisor

import (
	"encoding/json"
	"net/http"
	"strings"
)

// Handler serves the supervisor's state for `kiln-node status` and `logs`:
//
//	GET /status        Status() as JSON
//	GET /logs/<name>   the service's recent output as text, 404 for an unknown name
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
			http.Error(w, "no service named "+name, http.StatusNotFound)
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
