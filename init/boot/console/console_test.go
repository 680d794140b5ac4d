package console

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"kiln/internal/testutil"
)

func TestFormat(t *testing.T) {
	var out testutil.SyncBuffer
	c := New(&out, time.Now().Add(-4210*time.Millisecond))
	c.Stage("mounts done")
	c.Warn("no %s", "power button")
	c.Fatal(errors.New("config kiln.config=/etc/bad.yaml: line 3: unknown field \"rloe\"\nrole: bad"))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if !regexp.MustCompile(`^kiln: \[   4\.2\ds\] mounts done$`).MatchString(lines[0]) {
		t.Errorf("stage line %q", lines[0])
	}
	if !regexp.MustCompile(`^kiln: \[   4\.2\ds\] warning: no power button$`).MatchString(lines[1]) {
		t.Errorf("warning line %q", lines[1])
	}
	if lines[2] != `kiln: FATAL: config kiln.config=/etc/bad.yaml: line 3: unknown field "rloe" ; role: bad` {
		t.Errorf("fatal line %q", lines[2])
	}
}

func TestZeroStart(t *testing.T) {
	var out testutil.SyncBuffer
	New(&out, time.Time{}).Stage("etcd ready")
	if !regexp.MustCompile(`^kiln: \[   0\.0\ds\] etcd ready\n$`).MatchString(out.String()) {
		t.Errorf("a console without a start counts from its creation: %q", out.String())
	}
	New(nil, time.Now()).Stage("to nowhere") // a nil writer discards
}
