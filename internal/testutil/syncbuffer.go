// Package testutil holds helpers shared by kiln's tests: an output buffer
// safe to read while written, waiting for a condition (Eventually), and the
// tail of a log. Its sub-packages are e2e (the built binaries, kubectl and
// cluster directories, for tests/host, tests/vm and tests/bench) and netns
// (network namespaces and their links, for the tests that need a network).
package testutil

import (
	"strings"
	"sync"
)

// SyncBuffer collects what a process or goroutine writes while a test
// reads it: an io.Writer whose String is safe to call at any time.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
