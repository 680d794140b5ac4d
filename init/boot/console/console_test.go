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

// The stage lines are recorded for the node's status, stage 1's (handed
// over in the environment across the exec) first.
func TestStagesRecordAndHandOver(t *testing.T) {
	stage1 := New(nil, time.Now().Add(-3*time.Second))
	stage1.Stage("stage 1: root mounted")
	stage1.Warn("odd\nline")
	env := EncodeStages(stage1.Stages())

	pid1 := New(nil, stage1.Started())
	pid1.Stage("mounts done")
	pid1.Record(DecodeStages(env + "garbage\n\tno time\n"))
	got := pid1.Stages()
	if len(got) != 3 || got[0].What != "stage 1: root mounted" || got[1].What != "warning: odd line" || got[2].What != "mounts done" {
		t.Fatalf("stages %+v", got)
	}
	if got[0].At < 3*time.Second || got[0].At > got[2].At {
		t.Errorf("times %v, %v: want since the kernel's start, in order", got[0].At, got[2].At)
	}
	for i := 0; i < 2*maxStages; i++ {
		pid1.Stage("again")
	}
	if n := len(pid1.Stages()); n != maxStages {
		t.Errorf("%d stages kept, want at most %d", n, maxStages)
	}
}
