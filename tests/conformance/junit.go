//go:build conformance

package conformance

import (
	"encoding/xml"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/onsi/ginkgo/v2/reporters"
)

// result is what one run of the suite gave: the specs it selected (the
// focus and skip filters passed them), by outcome.
type result struct {
	Passed, Failed, Skipped []reporters.JUnitTestCase
	Elapsed                 time.Duration
}

// Run is the number of specs selected: passed, failed or skipped.
func (r result) Run() int { return len(r.Passed) + len(r.Failed) + len(r.Skipped) }

// Summary is the one line make conformance ends with.
func (r result) Summary() string {
	return fmt.Sprintf("conformance: %d specs run, %d passed, %d failed, %d skipped in %s",
		r.Run(), len(r.Passed), len(r.Failed), len(r.Skipped), r.Elapsed.Round(time.Second))
}

// filteredOut reports whether ginkgo never selected the spec: its focus,
// skip or label filter left it out (the message is "skipped" alone; a
// spec that skips itself says why, "skipped - REASON").
func filteredOut(tc reporters.JUnitTestCase) bool {
	return tc.Status == "skipped" && (tc.Skipped == nil || tc.Skipped.Message == "skipped")
}

// readJUnit reads the report e2e.test wrote (every spec of the suite, the
// ones its filters left out as skipped), keeps the selected specs'
// testcases (the suite's setup nodes are not specs) and writes them to
// out as a report of their own.
func readJUnit(in, out string, elapsed time.Duration) (result, error) {
	data, err := os.ReadFile(in)
	if err != nil {
		return result{}, err
	}
	var suites reporters.JUnitTestSuites
	if err := xml.Unmarshal(data, &suites); err != nil {
		return result{}, fmt.Errorf("%s: %w", in, err)
	}
	r := result{Elapsed: elapsed}
	kept := reporters.JUnitTestSuites{Time: suites.Time}
	for _, s := range suites.TestSuites {
		ks := s
		ks.TestCases, ks.Tests, ks.Failures, ks.Errors, ks.Skipped, ks.Disabled = nil, 0, 0, 0, 0, 0
		for _, tc := range s.TestCases {
			if !strings.HasPrefix(tc.Name, "[It]") || filteredOut(tc) {
				continue
			}
			switch tc.Status {
			case "passed":
				r.Passed = append(r.Passed, tc)
			case "skipped", "pending":
				r.Skipped = append(r.Skipped, tc)
				ks.Skipped++
			default: // failed, timedout, panicked, interrupted, aborted
				r.Failed = append(r.Failed, tc)
				if tc.Error != nil {
					ks.Errors++
				} else {
					ks.Failures++
				}
			}
			ks.TestCases = append(ks.TestCases, tc)
			ks.Tests++
		}
		kept.TestSuites = append(kept.TestSuites, ks)
		kept.Tests += ks.Tests
		kept.Failures += ks.Failures
		kept.Errors += ks.Errors
		kept.Disabled += ks.Skipped
	}
	b, err := xml.MarshalIndent(kept, "", "  ")
	if err != nil {
		return r, err
	}
	return r, os.WriteFile(out, append([]byte(xml.Header), append(b, '\n')...), 0o644)
}

// failureLine is a failed spec's name and the first line of its failure.
func failureLine(tc reporters.JUnitTestCase) string {
	msg := ""
	switch {
	case tc.Failure != nil:
		msg = tc.Failure.Message
	case tc.Error != nil:
		msg = tc.Error.Message
	}
	msg, _, _ = strings.Cut(strings.TrimSpace(msg), "\n")
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return fmt.Sprintf("%s (%s): %s", tc.Name, tc.Status, msg)
}
