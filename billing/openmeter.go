package billing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// BatchContentType is the media type of a batch of structured CloudEvents.
const BatchContentType = "application/cloudevents-batch+json"

// IngestPath is OpenMeter's event ingestion endpoint, under its base URL.
const IngestPath = "/api/v1/events"

// DefaultRequestTimeout bounds one ingestion request.
const DefaultRequestTimeout = 10 * time.Second

// maxErrorBody is how much of an error response is read for the error text.
const maxErrorBody = 4 << 10

// maxErrorDetail is how much of it is kept in the error (and in health).
const maxErrorDetail = 512

// ErrorKind classifies a failed ingestion for the processor.
type ErrorKind string

// The kinds, and what the processor does about each.
const (
	// KindRateLimited (429): wait Retry-After, resend the same batch.
	KindRateLimited ErrorKind = "rate_limited"
	// KindBadBatch (400, 413, 422): some event (or the batch's size) is
	// unacceptable; split the batch to isolate it.
	KindBadBatch ErrorKind = "bad_batch"
	// KindClient (401, 403 and other 4xx): our configuration is wrong (key,
	// URL); back off, retry, report unhealthy.
	KindClient ErrorKind = "client"
	// KindServer (5xx, 408): OpenMeter's trouble; back off and retry.
	KindServer ErrorKind = "server"
	// KindNetwork (connection errors, timeouts): back off and retry.
	KindNetwork ErrorKind = "network"
)

// IngestError is a failed ingestion request. Its text never contains the API
// key; Detail is a bounded, single-line excerpt of the response body, for
// logs and the health report (not for API clients).
type IngestError struct {
	Kind ErrorKind
	// HTTP status; 0 for network errors.
	Status int
	// Retry-After of a 429, 0 if absent or unreadable.
	RetryAfter time.Duration
	Detail     string
}

func (e *IngestError) Error() string {
	if e.Status == 0 {
		return "openmeter: " + e.Detail
	}
	if e.Detail == "" {
		return fmt.Sprintf("openmeter: HTTP %d", e.Status)
	}
	return fmt.Sprintf("openmeter: HTTP %d: %s", e.Status, e.Detail)
}

// Client posts batches of events to OpenMeter's ingestion API. It is safe
// for concurrent use.
type Client struct {
	endpoint string
	auth     string // "Bearer <key>", or "" when no key is configured
	apiKey   string // only to scrub it from error texts
	timeout  time.Duration
	hc       *http.Client
}

// NewClient returns a client for the OpenMeter at baseURL (scheme and host,
// optionally a path prefix). apiKey may be empty for a self-hosted OpenMeter
// without authentication; then no Authorization header is sent. timeout <= 0
// means DefaultRequestTimeout; hc nil means a client of its own.
func NewClient(baseURL, apiKey string, timeout time.Duration, hc *http.Client) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(baseURL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("openmeter: base URL %q is not an http(s) URL", baseURL)
	}
	if u.User != nil {
		return nil, errors.New("openmeter: base URL must not carry credentials; use the API key")
	}
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	if hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Several workers (and the bisection of a bad batch) post to one
		// host; keep their connections alive.
		t.MaxIdleConnsPerHost = 16
		hc = &http.Client{Transport: t}
	}
	c := &Client{
		endpoint: strings.TrimRight(u.String(), "/") + IngestPath,
		apiKey:   apiKey,
		timeout:  timeout,
		hc:       hc,
	}
	if apiKey != "" {
		c.auth = "Bearer " + apiKey
	}
	return c, nil
}

// String names the client without its key (fmt would print unexported
// fields, the key among them).
func (c *Client) String() string { return "openmeter.Client(" + c.endpoint + ")" }

// GoString is String for %#v.
func (c *Client) GoString() string { return c.String() }

// Endpoint is the URL batches are posted to.
func (c *Client) Endpoint() string { return c.endpoint }

// BatchBody builds the body of a batch from structured JSON CloudEvents as
// stored on the stream: a JSON array of them, copied byte for byte.
func BatchBody(events [][]byte) []byte {
	n := 2 + len(events)
	for _, e := range events {
		n += len(e)
	}
	b := make([]byte, 0, n)
	b = append(b, '[')
	for i, e := range events {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e...)
	}
	return append(b, ']')
}

// Ingest posts one batch (a JSON array of structured CloudEvents, see
// BatchBody). It returns nil when OpenMeter accepted it (any 2xx; 204 is
// what OpenMeter answers) and an *IngestError otherwise.
func (c *Client) Ingest(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return &IngestError{Kind: KindClient, Detail: c.scrub(err.Error())}
	}
	req.Header.Set("Content-Type", BatchContentType)
	req.Header.Set("Accept", "application/json, application/problem+json")
	if c.auth != "" {
		req.Header.Set("Authorization", c.auth)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.networkError(ctx, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// Drain a little so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &IngestError{Kind: classify(resp.StatusCode), Status: resp.StatusCode, Detail: c.scrub(string(raw))}
	if resp.StatusCode == http.StatusTooManyRequests {
		e.RetryAfter = ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return e
}

// classify maps an unsuccessful HTTP status to what the processor does.
func classify(status int) ErrorKind {
	switch {
	case status == http.StatusTooManyRequests:
		return KindRateLimited
	case status == http.StatusBadRequest, status == http.StatusRequestEntityTooLarge, status == http.StatusUnprocessableEntity:
		return KindBadBatch
	case status == http.StatusRequestTimeout, status >= 500:
		return KindServer
	default: // 401, 403, 404 and other 4xx; also 1xx/3xx, which we never expect
		return KindClient
	}
}

// networkError describes a request that got no response. url.Error already
// strips any password from the URL; the key is only ever in a header.
func (c *Client) networkError(ctx context.Context, err error) *IngestError {
	var ne net.Error
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return &IngestError{Kind: KindNetwork, Detail: fmt.Sprintf("no response within %s from %s", c.timeout, c.endpoint)}
	}
	return &IngestError{Kind: KindNetwork, Detail: c.scrub(err.Error())}
}

// scrub makes a response excerpt safe and short: no API key, one line, at
// most maxErrorDetail bytes.
func (c *Client) scrub(s string) string {
	if c.apiKey != "" {
		s = strings.ReplaceAll(s, c.apiKey, "[REDACTED]")
	}
	s = strings.Join(strings.FieldsFunc(s, unicode.IsSpace), " ")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
	if len(s) > maxErrorDetail {
		cut := maxErrorDetail
		for cut > 0 && !utf8Start(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// ParseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date
// (RFC 9110 §10.2.3). Missing, unreadable or past values give 0.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > 24*3600 {
			secs = 24 * 3600
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
