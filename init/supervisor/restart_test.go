package supervisor

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"kiln/configs/nodeapi"
)

// Restart stops the running process and starts a new one at once, leaves
// its dependents running, and is no crash.
func TestRestart(t *testing.T) {
	dir := t.TempDir()
	svc := helperSpec(dir, "svc", "serve")
	svc.Ready = fileProbe(readyFile(dir, "svc"))
	dep := helperSpec(dir, "dep", "serve")
	dep.DependsOn = []string{"svc"}
	task := helperSpec(dir, "task", "exit", "0")
	task.Oneshot = true
	r := startSupervisor(t, testOptions(), svc, dep, task)
	waitReady(t, r)
	before, depBefore := r.service("svc"), r.service("dep")

	if err := os.Remove(readyFile(dir, "svc")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 { // twice in a row: two runs, each restarted once
		if err := r.Restart(ctx, "svc"); err != nil {
			t.Fatal(err)
		}
	}
	waitReady(t, r, "svc")
	after := r.service("svc")
	if after.PID == before.PID || after.Restarts != 2 || after.State != nodeapi.StateReady {
		t.Errorf("after two restarts: %+v (before: %+v)", after, before)
	}
	if d := r.service("dep"); d.PID != depBefore.PID || d.Restarts != 0 {
		t.Errorf("the dependent was restarted too: %+v", d)
	}
	var whats []string
	for _, e := range events(r.Status(), "svc") {
		whats = append(whats, e.What)
	}
	if slices.Contains(whats, "crash-loop") || strings.Count(strings.Join(whats, "\n"), "restarting") != 2 {
		t.Errorf("svc's events %q: want two restarts and no crash loop", whats)
	}
	journal := readJournal(t, dir)
	if i := slices.Index(journal, "stop svc"); i < 0 || !slices.Contains(journal[i:], "start svc") {
		t.Errorf("journal %q: want svc stopped (SIGTERM) then started", journal)
	}

	for name, want := range map[string]string{"nope": "unknown service", "task": "runs to completion"} {
		if err := r.Restart(ctx, name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Restart(%s) = %v, want %q", name, err, want)
		}
	}
}

// A service in backoff starts at once when restarted.
func TestRestartInBackoff(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions()
	opts.BackoffBase, opts.BackoffMax = time.Minute, time.Minute
	r := startSupervisor(t, opts, helperSpec(dir, "svc", "exit", "1"))
	eventually(t, 10*time.Second, func() error {
		if s := r.service("svc"); s.State != nodeapi.StateBackoff {
			return fmt.Errorf("want backoff: %+v", s)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	begin := time.Now()
	if err := r.Restart(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("Restart of a service in a minute's backoff took %s", d)
	}
	if s := r.service("svc"); s.Restarts != 1 {
		t.Errorf("after Restart: %+v, want one restart", s)
	}
}
