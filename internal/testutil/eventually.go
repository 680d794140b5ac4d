package testutil

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// WaitUntil calls cond, then again every interval, until it returns nil.
// It returns nil then, or, once timeout has passed, an error holding
// cond's last one. cond is called at least once.
func WaitUntil(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("not within %s: %w", timeout, err)
		}
		time.Sleep(min(interval, left))
	}
}

// Eventually is WaitUntil that fails the test, naming what it waited for.
// cond may itself fail the test (t.Fatal) to stop waiting at once.
func Eventually(t testing.TB, timeout, interval time.Duration, what string, cond func() error) {
	t.Helper()
	if err := WaitUntil(timeout, interval, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Until turns a condition that holds or not into one for WaitUntil and
// Eventually: its error says what is still awaited.
func Until(what string, cond func() bool) func() error {
	return func() error {
		if cond() {
			return nil
		}
		return errors.New("still waiting for " + what)
	}
}
