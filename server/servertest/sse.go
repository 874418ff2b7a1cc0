package servertest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Event is one Server-Sent Event.
type Event struct {
	ID, Name string
	Data     string
}

// JSON decodes the event's data.
func (e Event) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(e.Data), &m); err != nil {
		t.Fatalf("event %s data is not JSON: %v: %q", e.Name, err, e.Data)
	}
	return m
}

// SSEReader reads events (and counts comments) from a stream, the way a
// browser's EventSource parses it.
type SSEReader struct {
	r        *bufio.Reader
	Comments int
}

// NewSSEReader reads from r.
func NewSSEReader(r io.Reader) *SSEReader { return &SSEReader{r: bufio.NewReader(r)} }

// Next returns the next event, or io.EOF at the end of the stream.
func (s *SSEReader) Next() (Event, error) {
	var ev Event
	var data []string
	seen := false
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && seen {
				return ev, fmt.Errorf("stream ended inside an event: %w", io.ErrUnexpectedEOF)
			}
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if !seen {
				continue
			}
			ev.Data = strings.Join(data, "\n")
			return ev, nil
		case strings.HasPrefix(line, ":"):
			s.Comments++
		case strings.HasPrefix(line, "id: "):
			ev.ID, seen = line[4:], true
		case strings.HasPrefix(line, "event: "):
			ev.Name, seen = line[7:], true
		case strings.HasPrefix(line, "data: "):
			data, seen = append(data, line[6:]), true
		default:
			return ev, fmt.Errorf("malformed SSE line %q", line)
		}
	}
}

// ReadAll reads every event until the stream ends.
func (s *SSEReader) ReadAll(t testing.TB) []Event {
	t.Helper()
	var out []Event
	for {
		ev, err := s.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("reading SSE: %v (after %d events)", err, len(out))
		}
		out = append(out, ev)
	}
}

// Stream opens a streaming request; the caller reads and closes the body.
func (in *Instance) Stream(t testing.TB, method, path, key, body string, headers ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, in.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}
