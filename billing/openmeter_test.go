package billing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestBatchBody(t *testing.T) {
	t.Parallel()
	if got := string(BatchBody(nil)); got != "[]" {
		t.Errorf("empty batch = %s", got)
	}
	got := string(BatchBody([][]byte{[]byte(`{"id":"a"}`), []byte(`{"id":"b"}`)}))
	if got != `[{"id":"a"},{"id":"b"}]` {
		t.Errorf("batch = %s", got)
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		" 120 ":                         2 * time.Minute,
		"0":                             0,
		"-5":                            0,
		"soon":                          0,
		"Fri, 01 May 2026 12:00:30 GMT": 30 * time.Second,
		"Fri, 01 May 2026 11:00:00 GMT": 0, // in the past
		"99999999":                      24 * time.Hour,
	} {
		if got := ParseRetryAfter(in, now); got != want {
			t.Errorf("ParseRetryAfter(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestClientClassifiesResponses(t *testing.T) {
	t.Parallel()
	cases := []struct {
		status     int
		retryAfter string
		kind       ErrorKind // "" = success
		wantAfter  time.Duration
	}{
		{204, "", "", 0},
		{200, "", "", 0},
		{202, "", "", 0},
		{429, "2", KindRateLimited, 2 * time.Second},
		{429, "", KindRateLimited, 0},
		{400, "", KindBadBatch, 0},
		{413, "", KindBadBatch, 0},
		{422, "", KindBadBatch, 0},
		{401, "", KindClient, 0},
		{403, "", KindClient, 0},
		{404, "", KindClient, 0},
		{408, "", KindServer, 0},
		{500, "", KindServer, 0},
		{502, "", KindServer, 0},
		{503, "", KindServer, 0},
	}
	for _, tc := range cases {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(`{"detail":"line one` + "\n" + `line two"}`))
			}))
			defer srv.Close()
			c, err := NewClient(srv.URL+"/", "k", time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Ingest(context.Background(), []byte(`[]`))
			if tc.kind == "" {
				if err != nil {
					t.Fatalf("status %d: %v", tc.status, err)
				}
				return
			}
			var ie *IngestError
			if !errors.As(err, &ie) {
				t.Fatalf("status %d: error %v is not an *IngestError", tc.status, err)
			}
			if ie.Kind != tc.kind || ie.Status != tc.status || ie.RetryAfter != tc.wantAfter {
				t.Errorf("status %d: got %+v, want kind %s, retry after %s", tc.status, ie, tc.kind, tc.wantAfter)
			}
			if strings.Contains(ie.Error(), "\n") || !strings.Contains(ie.Error(), "line one line two") {
				t.Errorf("error text %q should hold the body on one line", ie.Error())
			}
		})
	}
}

func TestClientSendsTheBatchAsOpenMeterExpects(t *testing.T) {
	t.Parallel()
	om := newFakeOpenMeter(t, testKey)
	c, err := NewClient(om.URL(), testKey, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	var events [][]byte
	for i := range 3 {
		b, err := Marshal(sampleEvent(t, "client", i, "tenant-1"))
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, b)
	}
	if err := c.Ingest(context.Background(), BatchBody(events)); err != nil {
		t.Fatal(err)
	}
	if st := om.stats(); st.unique != 3 || len(st.violations) > 0 {
		t.Fatalf("stand-in saw %+v", st)
	}
}

func TestClientNeverDisclosesTheKey(t *testing.T) {
	t.Parallel()
	const key = "sk-very-secret-0123456789"
	// A server that echoes the Authorization header in its error body.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte("bad credentials: " + r.Header.Get("Authorization")))
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL, key, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Ingest(context.Background(), []byte(`[]`))
	var ie *IngestError
	if !errors.As(err, &ie) || ie.Kind != KindClient {
		t.Fatalf("got %v, want a client error", err)
	}
	if strings.Contains(err.Error(), key) {
		t.Fatalf("the error discloses the API key: %q", err)
	}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
		if strings.Contains(s, key) {
			t.Errorf("printing the client discloses the key: %q", s)
		}
	}
	if _, err := NewClient("https://user:pass@openmeter.example", key, 0, nil); err == nil {
		t.Error("a base URL with credentials was accepted")
	}
	for _, bad := range []string{"", "openmeter.cloud", "ftp://openmeter.cloud", "http://"} {
		if _, err := NewClient(bad, key, 0, nil); err == nil {
			t.Errorf("base URL %q was accepted", bad)
		}
	}
}

func TestClientNetworkErrors(t *testing.T) {
	t.Parallel()
	// Hangs longer than the client's timeout.
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hang.Close()
	defer close(release)
	c, err := NewClient(hang.URL, "k", 100*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = c.Ingest(context.Background(), []byte(`[]`))
	var ie *IngestError
	if !errors.As(err, &ie) || ie.Kind != KindNetwork || !strings.Contains(err.Error(), "no response within") {
		t.Fatalf("hang: got %v, want a network timeout", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("the request timeout was not applied (%s)", time.Since(start))
	}

	// Nothing listening.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	c, err = NewClient("http://"+addr, "k", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Ingest(context.Background(), []byte(`[]`))
	if !errors.As(err, &ie) || ie.Kind != KindNetwork || ie.Status != 0 {
		t.Fatalf("refused: got %v, want a network error", err)
	}
}
