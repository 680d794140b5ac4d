package testutil

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestWaitUntil(t *testing.T) {
	calls := 0
	err := WaitUntil(time.Second, time.Millisecond, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("WaitUntil: %v after %d calls, want nil after 3", err, calls)
	}

	last := errors.New("still down")
	start := time.Now()
	err = WaitUntil(50*time.Millisecond, 10*time.Millisecond, func() error { return last })
	if !errors.Is(err, last) || !strings.Contains(err.Error(), "not within 50ms") {
		t.Errorf("timeout error %v: want it to wrap the last error and name the timeout", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > time.Second {
		t.Errorf("WaitUntil with a 50ms timeout took %s", d)
	}

	calls = 0
	WaitUntil(0, time.Hour, func() error { calls++; return last })
	if calls != 1 {
		t.Errorf("a zero timeout called cond %d times, want once", calls)
	}
}

func TestUntil(t *testing.T) {
	ok := false
	cond := Until("the flag", func() bool { return ok })
	if err := cond(); err == nil || !strings.Contains(err.Error(), "the flag") {
		t.Errorf("Until while false: %v", err)
	}
	ok = true
	if err := cond(); err != nil {
		t.Errorf("Until while true: %v", err)
	}
}
