package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestWebhookDeniesLabelledObjects(t *testing.T) {
	srv := httptest.NewServer(webhookHandler())
	defer srv.Close()
	for _, tc := range []struct {
		labels  string
		allowed bool
	}{
		{`{"kiln.dev/deny":"true"}`, false},
		{`{"kiln.dev/deny":"false"}`, true},
		{`{}`, true},
	} {
		body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","object":{"metadata":{"name":"cm","labels":` + tc.labels + `}}}}`
		resp, err := http.Post(srv.URL+"/validate", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var rev admissionReview
		err = json.NewDecoder(resp.Body).Decode(&rev)
		resp.Body.Close()
		if err != nil || rev.Response == nil {
			t.Fatalf("%s: answer: %v %+v", tc.labels, err, rev)
		}
		if rev.APIVersion != "admission.k8s.io/v1" || rev.Kind != "AdmissionReview" || rev.Response.UID != "u1" || rev.Response.Allowed != tc.allowed {
			t.Errorf("%s: answer %+v, want allowed=%v for uid u1", tc.labels, rev.Response, tc.allowed)
		}
		if !tc.allowed && (rev.Response.Status == nil || !strings.Contains(rev.Response.Status.Message, "kiln.dev/deny=true")) {
			t.Errorf("%s: a denial says why: %+v", tc.labels, rev.Response.Status)
		}
	}
	if resp, err := http.Post(srv.URL+"/validate", "application/json", strings.NewReader("{}")); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a body without a request: %v %v, want 400", err, resp)
	}
}
