package testutil

import "testing"

func TestTail(t *testing.T) {
	if got := TailLines("a\nb\nc\n", 2); got != "b\nc" {
		t.Errorf("TailLines: %q", got)
	}
	if got := TailLines("a\n", 5); got != "a" {
		t.Errorf("TailLines of less: %q", got)
	}
	if got := TailBytes("abcdef", 3); got != "def" {
		t.Errorf("TailBytes: %q", got)
	}
	if got := TailBytes("ab", 3); got != "ab" {
		t.Errorf("TailBytes of less: %q", got)
	}
}
