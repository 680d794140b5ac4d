package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"kiln/configs/nodeapi"
)

func TestCheckSkew(t *testing.T) {
	for _, tc := range []struct {
		server, master, worker string
		untouched              []string
		want                   string // "" ok, else part of the error
	}{
		{"v1.37.2", "v1.37.3", "v1.37.3", nil, ""},
		{"v1.37.2", "v1.38.0", "v1.38.0", nil, ""},
		{"v1.37.2", "v1.38.0", "v1.37.2", nil, ""},
		{"v1.37.2", "", "v1.37.3", nil, ""},
		{"v1.37.2", "v1.36.1", "", nil, "does not downgrade"},
		{"v1.37.2", "v1.39.0", "", nil, "upgrade to 1.38 first"},
		{"v1.37.2", "", "v1.38.0", nil, "newer than the API servers' 1.37"},
		{"v1.37.2", "v1.38.0", "v1.34.0", nil, "more than three minor versions older"},
		{"v1.37.2", "v1.38.0", "", []string{"v1.34.5"}, "upgrade the workers too"},
		{"v1.37.2", "v1.38.0", "", []string{"v1.35.0"}, ""},
		{"v1.37.2", "", "", nil, ""},
		{"nonsense", "", "", nil, "API server's version"},
	} {
		err := checkSkew(tc.server, tc.master, tc.worker, tc.untouched)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s → master %s worker %s (left %v): %v, want %q", tc.server, tc.master, tc.worker, tc.untouched, err, tc.want)
		}
	}
}

func TestPlanRollout(t *testing.T) {
	img := func(role, release, id string) upgradeImage {
		return upgradeImage{up: nodeapi.Upgrade{Role: role, Release: release, ImageID: id}, kubernetesVersion: "v1.37.2"}
	}
	n := func(name, role, release, slot string) rolloutNode {
		return rolloutNode{name: name, image: &nodeapi.ImageStatus{Role: role, Release: release, Boot: "qcow2-bios", Slot: slot,
			Slots: map[string]nodeapi.SlotImage{slot: {ImageID: "old"}}}}
	}
	images := map[string]upgradeImage{"master": img("master", "v2", "m2"), "worker": img("worker", "v2", "w2")}
	p, err := planRollout("v1.37.2", []rolloutNode{n("m1", "master", "v1", "a"), n("w1", "worker", "v1", "b")}, images)
	if err != nil || len(p.todo) != 2 || p.todo[0].name != "m1" {
		t.Fatalf("%+v %v", p, err)
	}
	// Only the workers' image: the master is left, and says so.
	p, err = planRollout("v1.37.2", []rolloutNode{n("m1", "master", "v1", "a"), n("w1", "worker", "v1", "a")}, map[string]upgradeImage{"worker": images["worker"]})
	if err != nil || len(p.todo) != 1 || !strings.Contains(strings.Join(p.lines, "\n"), "no master image given") {
		t.Errorf("%+v %v", p, err)
	}
	// A diskless node: refused before anything.
	pxe := n("w2", "worker", "v1", "")
	pxe.image.Boot = "pxe"
	if _, err := planRollout("v1.37.2", []rolloutNode{n("m1", "master", "v1", "a"), pxe}, images); err == nil || !strings.Contains(err.Error(), "booted from pxe") {
		t.Errorf("a PXE node: %v", err)
	}
	// A node already on the image: skipped.
	done := n("w1", "worker", "v2", "b")
	done.image.Slots["b"] = nodeapi.SlotImage{ImageID: "w2"}
	if p, err := planRollout("v1.37.2", []rolloutNode{done}, images); err != nil || len(p.todo) != 0 {
		t.Errorf("a node already upgraded: %+v %v", p, err)
	}
}

// fakeDrainAPI is an API server's pods, evictions and a budget: pod
// "web-0" may be evicted only after "web-1" is gone (one may be down at a
// time; the drain asks for web-0 first).
type fakeDrainAPI struct {
	mu         sync.Mutex
	pods       map[string]apiPod
	unschedule bool
	evictions  []string
	refused    int
}

func (f *fakeDrainAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == "PATCH" && r.URL.Path == "/api/v1/nodes/n1":
		f.unschedule = true
		w.Write([]byte("{}"))
	case r.Method == "GET" && r.URL.Path == "/api/v1/pods":
		if r.URL.Query().Get("fieldSelector") != "spec.nodeName=n1" {
			http.Error(w, "bad selector", 400)
			return
		}
		var items []apiPod
		for _, p := range f.pods {
			items = append(items, p)
		}
		json.NewEncoder(w).Encode(map[string]any{"items": items})
	case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/eviction"):
		name := strings.Split(r.URL.Path, "/")[6]
		if _, ok := f.pods[name]; !ok {
			http.Error(w, `{"message":"not found"}`, 404)
			return
		}
		if name == "web-0" {
			if _, other := f.pods["web-1"]; other {
				f.refused++
				w.WriteHeader(429)
				w.Write([]byte(`{"message":"Cannot evict pod as it would violate the pod's disruption budget."}`))
				return
			}
		}
		f.evictions = append(f.evictions, name)
		delete(f.pods, name)
		w.WriteHeader(201)
		w.Write([]byte("{}"))
	default:
		http.Error(w, fmt.Sprintf("unexpected %s %s", r.Method, r.URL), 500)
	}
}

func pod(name string, owner string, annotations map[string]string) apiPod {
	var p apiPod
	p.Metadata.Name, p.Metadata.Namespace, p.Metadata.Annotations = name, "default", annotations
	if owner != "" {
		p.Metadata.OwnerReferences = append(p.Metadata.OwnerReferences, struct {
			Kind string `json:"kind"`
		}{owner})
	}
	p.Status.Phase = "Running"
	return p
}

func TestDrainRespectsBudgetsAndLeavesDaemonSets(t *testing.T) {
	f := &fakeDrainAPI{pods: map[string]apiPod{
		"web-1":  pod("web-1", "ReplicaSet", nil),
		"web-0":  pod("web-0", "ReplicaSet", nil),
		"proxy":  pod("proxy", "DaemonSet", nil),
		"static": pod("static", "Node", map[string]string{"kubernetes.io/config.mirror": "x"}),
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	api := &kubeAPI{server: srv.URL, client: srv.Client()}
	var out bytes.Buffer
	if err := api.drain(context.Background(), &out, "n1", false, time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !f.unschedule || strings.Join(f.evictions, ",") != "web-1,web-0" || f.refused == 0 {
		t.Errorf("cordoned %v, evictions %v, refused %d\n%s", f.unschedule, f.evictions, f.refused, out.String())
	}
	if _, ok := f.pods["proxy"]; !ok {
		t.Error("a DaemonSet's pod was evicted")
	}
	if !strings.Contains(out.String(), "disruption budget") {
		t.Errorf("the budget's wait is not said:\n%s", out.String())
	}

	// A pod no controller recreates: refused without --force.
	f = &fakeDrainAPI{pods: map[string]apiPod{"bare": pod("bare", "", nil)}}
	srv2 := httptest.NewServer(f)
	defer srv2.Close()
	api = &kubeAPI{server: srv2.URL, client: srv2.Client()}
	if err := api.drain(context.Background(), &out, "n1", false, time.Minute); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("a bare pod: %v", err)
	}
	if err := api.drain(context.Background(), &out, "n1", true, time.Minute); err != nil || len(f.evictions) != 1 {
		t.Errorf("a bare pod with --force: %v %v", err, f.evictions)
	}
}
