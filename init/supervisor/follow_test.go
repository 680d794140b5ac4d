package supervisor

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A follower gets the tail, then each new line as it comes, and is told
// when it fell behind the ring; it stops when the client goes away.
func TestFollowLogs(t *testing.T) {
	k := newSink("etcd", nil)
	for i := range 5 {
		k.write([]byte(fmt.Sprintf("old %d", i)))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tail, follow, err := logsQuery(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		serveLogs(w, r, k, tail, follow)
	}))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/?tail=2")
	if err != nil {
		t.Fatal(err)
	}
	b := new(strings.Builder)
	bufio.NewReader(resp.Body).WriteTo(b)
	resp.Body.Close()
	if b.String() != "old 3\nold 4\n" {
		t.Errorf("tail: %q", b.String())
	}

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/?tail=1&follow=1", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	line := func() string {
		done := make(chan string, 1)
		go func() { l, _ := r.ReadString('\n'); done <- l }()
		select {
		case l := <-done:
			return strings.TrimSuffix(l, "\n")
		case <-time.After(5 * time.Second):
			t.Fatal("no line within 5s")
			return ""
		}
	}
	if l := line(); l != "old 4" {
		t.Errorf("first line %q", l)
	}
	k.write([]byte("new 1"))
	if l := line(); l != "new 1" {
		t.Errorf("followed line %q", l)
	}
	// A burst of more lines than the ring holds: the follower reads to
	// the last (with a loss notice if it fell behind; TestSinkSince).
	for i := range ringLines + 10 {
		k.write([]byte(fmt.Sprintf("burst %d", i)))
	}
	for n := 0; n <= ringLines+11; n++ {
		if line() == fmt.Sprintf("burst %d", ringLines+9) {
			break
		}
	}
	cancel()

	for _, q := range []string{"tail=-1", "tail=x", "follow=2"} {
		resp, err := http.Get(srv.URL + "/?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d", q, resp.StatusCode)
		}
	}
}

func TestSinkSince(t *testing.T) {
	k := newSink("x", nil)
	for i := range ringLines + 3 {
		k.write([]byte(fmt.Sprint(i)))
	}
	lines, next, dropped, _ := k.since(0)
	if dropped != 3 || len(lines) != ringLines || lines[0] != "3" || next != ringLines+3 {
		t.Errorf("since(0): %d lines from %q, dropped %d, next %d", len(lines), lines[0], dropped, next)
	}
	lines, _, dropped, changed := k.since(next)
	if len(lines) != 0 || dropped != 0 {
		t.Errorf("since(end): %q %d", lines, dropped)
	}
	k.write([]byte("more"))
	select {
	case <-changed:
	default:
		t.Error("a new line did not wake the follower")
	}
}

func TestLastLines(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc", 1, "c"},
		{"a\nb\n", 5, "a\nb\n"},
		{"a\nb\n", 0, ""},
		{"", 3, ""},
	} {
		if got := string(lastLines([]byte(c.in), c.n)); got != c.want {
			t.Errorf("lastLines(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}
