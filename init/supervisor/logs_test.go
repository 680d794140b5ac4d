package supervisor

import (
	"kiln/configs/nodeapi"

	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSplitLines(t *testing.T) {
	long := strings.Repeat("x", maxLineBytes+10)
	in := "one\r\ntwo\n\n" + long + "\nlast without newline"
	var got []string
	splitLines(strings.NewReader(in), func(b []byte) { got = append(got, string(b)) })
	want := []string{"one", "two", "", long[:maxLineBytes], long[maxLineBytes:], "last without newline"}
	if !slices.Equal(got, want) {
		t.Errorf("got %d lines %.80q, want %d", len(got), got, len(want))
	}
}

func TestRotatingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.log")
	r, err := openRotating(path, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i := range 20 {
		l := fmt.Sprintf("line %02d %s", i, strings.Repeat(".", 21)) // 29 bytes + newline
		lines = append(lines, l)
		if err := r.writeLine([]byte(l)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.close(); err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, p := range []string{path + ".2", path + ".1", path} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 100 {
			t.Errorf("%s has %d bytes, over the 100 allowed", p, len(b))
		}
		kept = append(kept, strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")...)
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Errorf("a third rotated file exists (keep is 2): %v", err)
	}
	// 3 lines fit a file, so the files hold 3+3+2: the last 8 lines, in order.
	if want := lines[len(lines)-8:]; !slices.Equal(kept, want) {
		t.Errorf("kept %q, want %q", kept, want)
	}

	// Reopening appends and knows the size: the next line rotates.
	r, err = openRotating(path, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	if err := r.writeLine([]byte(strings.Repeat("y", 40))); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path + ".1"); !strings.HasPrefix(string(b), lines[18]) {
		t.Errorf("after reopen, .1 holds %q", b)
	}
}

func TestSinkRing(t *testing.T) {
	k := newSink("svc", nil)
	for i := range ringLines + 5 {
		k.write(fmt.Appendf(nil, "%d", i))
	}
	got := k.lines()
	if len(got) != ringLines || got[0] != "5" || got[len(got)-1] != fmt.Sprint(ringLines+4) {
		t.Errorf("ring: %d lines, %q ... %q", len(got), got[0], got[len(got)-1])
	}
	k.write([]byte(strings.Repeat("z", maxRingLineBytes+3)))
	got = k.lines()
	if last := got[len(got)-1]; !strings.HasSuffix(last, "[3 bytes cut; whole line in the log file]") {
		t.Errorf("long line kept as %.40q...", last)
	}
}

// A child's output lands in its log file, rotated, in the ring and on
// Output; the handler serves status and logs.
func TestLogsAndHandler(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	opts := testOptions()
	opts.LogDir = logDir
	opts.MaxLogBytes = 4096
	opts.MaxLogFiles = 2
	var out syncBuffer
	opts.Output = &out
	sp := helperSpec(dir, "chatty", "lines", "600")
	sp.Ready = fileProbe(readyFile(dir, "chatty"))
	r := startSupervisor(t, opts, sp)
	waitReady(t, r)
	eventually(t, 10*time.Second, func() error {
		lines, _ := r.Logs("chatty")
		if !slices.Contains(lines, "after long") || !slices.Contains(lines, "line 0599 of chatty") || !slices.Contains(lines, "hello from chatty") {
			return fmt.Errorf("not all output in Logs yet (%d lines)", len(lines))
		}
		return nil
	})

	lines, ok := r.Logs("chatty")
	if !ok || len(lines) != ringLines {
		t.Errorf("Logs: %d lines, ok %v; want the last %d", len(lines), ok, ringLines)
	}
	if slices.Contains(lines, "line 0000 of chatty") {
		t.Error("the oldest line is still in the ring")
	}
	if _, ok := r.Logs("nope"); ok {
		t.Error("Logs of an unknown service says ok")
	}

	// Files: chatty.log plus two rotated; together they end like the ring.
	var files []string
	for _, p := range []string{"chatty.log.2", "chatty.log.1", "chatty.log"} {
		b, err := os.ReadFile(filepath.Join(logDir, p))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, string(b))
	}
	if _, err := os.Stat(filepath.Join(logDir, "chatty.log.3")); !os.IsNotExist(err) {
		t.Errorf("chatty.log.3 exists: %v", err)
	}
	all := strings.Join(files, "")
	if !strings.HasSuffix(all, lines[len(lines)-1]+"\n") || !strings.Contains(all, "after long\n") {
		t.Errorf("log files do not end with the ring's last line %q", lines[len(lines)-1])
	}

	if o := out.String(); !strings.Contains(o, "chatty     | line 0599 of chatty\n") ||
		!strings.Contains(o, "supervisor | chatty: started (pid ") ||
		!strings.Contains(o, "supervisor | chatty: ready\n") {
		t.Errorf("Output lacks the prefixed lines:\n%.2000s", o)
	}

	h := r.Handler()
	get := func(method, path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		return rec
	}
	rec := get("GET", "/status")
	var st nodeapi.Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); rec.Code != 200 || err != nil {
		t.Fatalf("/status: %d %v\n%s", rec.Code, err, rec.Body)
	}
	if len(st.Services) != 1 || st.Services[0].Name != "chatty" || st.Services[0].State != nodeapi.StateReady ||
		st.Started.IsZero() || st.Services[0].ReadyAt.IsZero() || len(st.Timeline) < 2 {
		t.Errorf("/status decoded to %+v", st)
	}
	rec = get("GET", "/logs/chatty")
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") ||
		!strings.Contains(rec.Body.String(), "line 0599 of chatty\n") {
		t.Errorf("/logs/chatty: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	if rec = get("GET", "/logs/nope"); rec.Code != 404 {
		t.Errorf("/logs/nope: %d", rec.Code)
	}
	if rec = get("POST", "/status"); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /status: %d", rec.Code)
	}
}
