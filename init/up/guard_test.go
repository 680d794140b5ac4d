package up

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kiln/configs/nodeapi"
	"kiln/internal/testutil"
)

// fakeEvents plays a supervisor whose timeline is capped at 2000 events
// while its count goes on.
type fakeEvents struct {
	mu    sync.Mutex
	total uint64
}

func (f *fakeEvents) add(n uint64) {
	f.mu.Lock()
	f.total += n
	f.mu.Unlock()
}

func (f *fakeEvents) EventsSince(n uint64) ([]nodeapi.Event, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var evs []nodeapi.Event
	for i := max(n, f.total-min(f.total, 2000)); i < f.total; i++ {
		what := "restarting in 1s"
		if i%2 == 0 {
			what = fmt.Sprintf("exited: exit status %d", i)
		}
		evs = append(evs, nodeapi.Event{Service: "kubelet", What: what})
	}
	return evs, f.total
}

func (f *fakeEvents) Logs(string) ([]string, bool) { return []string{"last words"}, true }

// Exits are still printed after the timeline has passed its cap.
func TestReportExitsPastTheCap(t *testing.T) {
	var out testutil.SyncBuffer
	con := newConsole(&out, time.Now())
	src := &fakeEvents{}
	src.add(2400)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go reportExits(ctx, con, src, 5*time.Millisecond)
	waitOut(t, &out, "kubelet exited: exit status 2398: last words\n")
	src.add(4)
	waitOut(t, &out, "kubelet exited: exit status 2402: last words\n")
	if n := strings.Count(out.String(), "exit status 2398:"); n != 1 {
		t.Errorf("exit 2398 printed %d times", n)
	}
	if n := strings.Count(out.String(), " exited: "); n != 1002 {
		t.Errorf("%d exits printed, want 1000 of the first 2000 kept and 2 new", n)
	}
}

func waitOut(t *testing.T, out *testutil.SyncBuffer, s string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), s); {
		if time.Now().After(deadline) {
			t.Fatalf("console lacks %q:\n%s", s, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// panicOnce is a listener whose first Accept panics, inside http.Serve.
type panicOnce struct {
	net.Listener
	n *atomic.Int32
}

func (l panicOnce) Accept() (net.Conn, error) {
	if l.n.Add(1) == 1 {
		panic("accept broke")
	}
	return l.Listener.Accept()
}

// A panic in Serve itself is reported and serving starts again on a new
// listener.
func TestStatusSocketSurvivesPanic(t *testing.T) {
	defer func(d time.Duration) { serveRestartBase = d }(serveRestartBase)
	serveRestartBase = 10 * time.Millisecond
	path := filepath.Join(t.TempDir(), "kiln.sock")
	var reported testutil.SyncBuffer
	var n atomic.Int32
	listen := func() (net.Listener, error) {
		ln, err := net.Listen("unix", path)
		return panicOnce{ln, &n}, err
	}
	ln, err := listen()
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "status") })}
	defer srv.Close()
	// The first listener's socket file stays; listen must replace it.
	listenAgain := func() (net.Listener, error) {
		_ = os.Remove(path)
		return listen()
	}
	go serve(srv, ln, listenAgain, "the test server", func(s string) { io.WriteString(&reported, s) })
	cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	var body []byte
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, err := cl.Get("http://kiln/status")
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer after the panic: %v\n%s", err, reported.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if string(body) != "status" || !strings.HasPrefix(reported.String(), "kiln: PANIC in the test server: accept broke\ngoroutine ") {
		t.Errorf("body %q, reported:\n%s", body, reported.String())
	}
}
