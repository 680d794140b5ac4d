package supervisor

import (
	"testing"
	"time"
)

func TestBackoffDelayGrowsAndCaps(t *testing.T) {
	const base, max = 20 * time.Millisecond, 160 * time.Millisecond
	want := []time.Duration{20, 20, 40, 80, 160, 160, 160} // after 0..6 short runs
	for n, w := range want {
		if got := backoffDelay(base, max, n); got != w*time.Millisecond {
			t.Errorf("after %d short runs: %s, want %s", n, got, w*time.Millisecond)
		}
	}
	// Defaults: 1s, 2s, 4s, 8s, 16s, then the 30s cap.
	if got := backoffDelay(time.Second, 30*time.Second, 6); got != 30*time.Second {
		t.Errorf("6th: %s", got)
	}
	// Weeks of crash-looping neither overflow nor pass the cap.
	if got := backoffDelay(time.Second, 30*time.Second, 1_000_000); got != 30*time.Second {
		t.Errorf("after a million short runs: %s", got)
	}
	// A cap below the base is the base.
	if got := backoffDelay(time.Second, time.Millisecond, 3); got != time.Second {
		t.Errorf("cap below base: %s", got)
	}
}

func TestShortRunsResetAfterStableRun(t *testing.T) {
	const stable = time.Minute
	n := 0
	for range 4 {
		n = nextShortRuns(n, time.Second, stable)
	}
	if n != 4 {
		t.Fatalf("4 short runs counted as %d", n)
	}
	if n = nextShortRuns(n, stable, stable); n != 0 {
		t.Errorf("a run of exactly StableAfter left the count at %d", n)
	}
	if d := backoffDelay(time.Second, 30*time.Second, n); d != time.Second {
		t.Errorf("delay after a stable run %s, want the base", d)
	}
	if n = nextShortRuns(n, stable-1, stable); n != 1 {
		t.Errorf("a short run after a stable one counted as %d", n)
	}
}
