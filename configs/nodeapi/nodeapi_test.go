package nodeapi

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestWriteTable(t *testing.T) {
	st := Status{
		Started: time.Now().Add(-time.Minute),
		Memory:  &MachineMemory{TotalBytes: 2014700 << 10, AvailableBytes: 1500000 << 10},
		Services: []ServiceStatus{
			{Name: "etcd", State: StateReady, PID: 42, MemoryBytes: 150 << 20},
			{Name: "kube-scheduler", State: StateCrashLoop, Restarts: 3, LastExit: "exit status 1", LastExitAt: time.Now()},
		},
		Timeline: []Event{{At: 1500 * time.Millisecond, Service: "etcd", What: "ready"}},
		Boot:     []BootStage{{At: 6980 * time.Millisecond, What: "stage 1: root mounted read-only"}},
	}
	var b strings.Builder
	st.WriteTable(&b)
	for _, want := range []string{"MEMORY", "150 MiB", "memory: 502 MiB in use, 1464 MiB available of 1967 MiB",
		"kube-scheduler", "crash-loop", "exit status 1", "timeline:", "1.50s", "up 1m0s",
		"boot (since the kernel started):\n      6.98s  stage 1: root mounted read-only\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

// WriteStatus prints what a node serves: JSON as it came, or the table.
func TestWriteStatus(t *testing.T) {
	body, err := json.Marshal(Status{Started: time.Now(), Services: []ServiceStatus{{Name: "etcd", State: StateReady}}})
	if err != nil {
		t.Fatal(err)
	}
	var js, table strings.Builder
	if err := WriteStatus(&js, body, "json"); err != nil || js.String() != string(body) {
		t.Errorf("json: %v %q", err, js.String())
	}
	if err := WriteStatus(&table, body, "table"); err != nil || !strings.Contains(table.String(), "etcd") {
		t.Errorf("table: %v %q", err, table.String())
	}
	if err := WriteStatus(&table, body, "yaml"); err == nil {
		t.Error("yaml output accepted")
	}
	if err := WriteStatus(&table, []byte("{"), "table"); err == nil || !strings.Contains(err.Error(), "decoding status") {
		t.Errorf("broken body: %v", err)
	}
}

func TestParseMeminfo(t *testing.T) {
	m := ParseMeminfo("MemTotal:        3000000 kB\nMemFree: 1 kB\nMemAvailable:    2000000 kB\n")
	if m == nil || m.TotalBytes != 3000000<<10 || m.AvailableBytes != 2000000<<10 {
		t.Errorf("%+v", m)
	}
	if m := ParseMeminfo("MemFree: 1 kB\n"); m != nil {
		t.Errorf("no MemTotal: %+v", m)
	}
}

// A master that competes for the virtual IP says whether it holds it, in
// the JSON (kiln cluster's host endpoint reads it) and the table.
func TestVIPStatus(t *testing.T) {
	for held, want := range map[bool]string{true: "virtual IP 10.0.0.5: held by this node\n", false: "virtual IP 10.0.0.5: held by another master"} {
		st := Status{Started: time.Now(), VIP: &VIPStatus{Address: "10.0.0.5", Held: held}}
		var b strings.Builder
		st.WriteTable(&b)
		if !strings.Contains(b.String(), want) {
			t.Errorf("held %t: table lacks %q:\n%s", held, want, b.String())
		}
		body, _ := json.Marshal(st)
		var back Status
		if err := json.Unmarshal(body, &back); err != nil || back.VIP == nil || *back.VIP != *st.VIP {
			t.Errorf("held %t: %s read back as %+v, %v", held, body, back.VIP, err)
		}
	}
	var b strings.Builder
	(Status{Started: time.Now()}).WriteTable(&b)
	body, _ := json.Marshal(Status{})
	if strings.Contains(b.String(), "virtual IP") || strings.Contains(string(body), "vip") {
		t.Errorf("a node without a VIP mentions one:\n%s\n%s", b.String(), body)
	}
}
