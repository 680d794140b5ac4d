package supervisor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"

	"kiln/configs/nodeapi"
)

// Handler serves the supervisor's state for `kiln-node status` and `logs`:
//
//	GET /status        Status() as JSON
//	GET /logs/<name>   the service's recent output as text, or the tail of a
//	                   LogFiles file; 404 for an unknown name. ?tail=N: the
//	                   last N lines only; ?follow=1 (a service's): then
//	                   its new lines as they come, until the client goes
//	                   away
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
		tail, follow, err := logsQuery(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sv, ok := s.byName[name]
		if !ok {
			if path, ok := s.opts.LogFiles[name]; ok {
				if follow {
					http.Error(w, name+" is a log file, not a component: it cannot be followed here", http.StatusBadRequest)
					return
				}
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				data, err := fileTail(path, MaxLogFileTail)
				if err != nil {
					http.Error(w, err.Error(), http.StatusNotFound)
					return
				}
				if tail >= 0 {
					data = lastLines(data, tail)
				}
				_, _ = w.Write(data)
				return
			}
			http.Error(w, "no service or log named "+name, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		serveLogs(w, r, sv.logs, tail, follow)
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

// logsQuery reads ?tail=N (-1: not given) and ?follow=1.
func logsQuery(r *http.Request) (tail int, follow bool, err error) {
	q := r.URL.Query()
	tail = -1
	if v := q.Get(nodeapi.LogsTail); v != "" {
		if tail, err = strconv.Atoi(v); err != nil || tail < 0 {
			return 0, false, fmt.Errorf("%s=%q: want a number of lines, 0 or more", nodeapi.LogsTail, v)
		}
	}
	switch v := q.Get(nodeapi.LogsFollow); v {
	case "", "0", "false":
	case "1", "true":
		follow = true
	default:
		return 0, false, fmt.Errorf("%s=%q: want 1 or 0", nodeapi.LogsFollow, v)
	}
	return tail, follow, nil
}

// serveLogs writes a sink's lines (the last tail of them; all when tail
// is -1) and, when follow is set, every line after them as it comes,
// until the client goes away. A follower that falls behind the ring by
// more than it holds is told how many lines it lost.
func serveLogs(w http.ResponseWriter, r *http.Request, k *sink, tail int, follow bool) {
	lines, pos, _, changed := k.since(0)
	if tail >= 0 && tail < len(lines) {
		lines = lines[len(lines)-tail:]
	}
	var b bytes.Buffer
	write := func(lines []string) bool {
		b.Reset()
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
		_, err := w.Write(b.Bytes())
		return err == nil
	}
	if !write(lines) || !follow {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		}
		var dropped uint64
		lines, pos, dropped, changed = k.since(pos)
		if dropped > 0 {
			lines = append([]string{fmt.Sprintf("[kiln: %d lines lost: they came faster than they were read]", dropped)}, lines...)
		}
		if !write(lines) {
			return
		}
	}
}

// lastLines is the last n lines of text.
func lastLines(text []byte, n int) []byte {
	if n <= 0 {
		return nil
	}
	end := len(text)
	if end > 0 && text[end-1] == '\n' {
		end--
	}
	i := end
	for ; n > 0; n-- {
		if i = bytes.LastIndexByte(text[:i], '\n'); i < 0 {
			return text
		}
	}
	return text[i+1:]
}
