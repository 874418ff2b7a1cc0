package streaming

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reads of stored messages go through JetStream's direct get API (batched
// where the server supports it, NATS ≥ 2.11), never through a consumer: a
// direct get is a request the stream answers and forgets, so a read holds
// no server resource after it returns, costs what it returns, and ends with
// its context. Consumers are for following a stream, not for reading it.
// Streams read this way need AllowDirect.

// DirectReadTimeout bounds one direct-get request when the caller's context
// has no earlier deadline.
const DirectReadTimeout = 5 * time.Second

// DirectBatch is the most messages one batched direct get returns.
const DirectBatch = 256

// directBatchBytes bounds one batch's payload (the server stops early).
const directBatchBytes = 4 << 20

// ErrNotFound means no stored message matched.
var ErrNotFound = errors.New("no such message")

func readCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) < DirectReadTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DirectReadTimeout)
}

// ReadFrom calls fn for up to limit stored messages of stream matching
// filter (wildcards allowed), from stream sequence fromSeq on, in order,
// until fn returns false. It returns the sequence after the last message
// read (where a next call would continue) and whether the stream held no
// further match at that point.
func ReadFrom(ctx context.Context, js jetstream.JetStream, stream, filter string, fromSeq uint64, limit int, fn func(*jetstream.RawStreamMsg) bool) (next uint64, done bool, err error) {
	next = max(fromSeq, 1)
	for limit > 0 {
		n := min(limit, DirectBatch)
		var lastSeq uint64
		stopped := false
		got, err := directGet(ctx, js, stream, directRequest{Seq: next, NextBySubject: filter, Batch: n, MaxBytes: directBatchBytes}, n,
			func(m *jetstream.RawStreamMsg) bool {
				lastSeq = m.Sequence
				stopped = !fn(m)
				return !stopped
			})
		if err != nil {
			return next, false, err
		}
		if got > 0 {
			next = lastSeq + 1
		}
		limit -= got
		if stopped {
			return next, false, nil
		}
		if got < n {
			return next, true, nil
		}
	}
	return next, false, nil
}

// First returns the first stored message matching filter at or after seq.
func First(ctx context.Context, js jetstream.JetStream, stream, filter string, seq uint64) (*jetstream.RawStreamMsg, error) {
	var out *jetstream.RawStreamMsg
	if _, _, err := ReadFrom(ctx, js, stream, filter, seq, 1, func(m *jetstream.RawStreamMsg) bool { out = m; return false }); err != nil {
		return nil, err
	}
	if out == nil {
		return nil, ErrNotFound
	}
	return out, nil
}

// FirstAt returns the first stored message matching filter (wildcards
// allowed) stored at or after t, by the stream's timestamps.
func FirstAt(ctx context.Context, js jetstream.JetStream, stream, filter string, t time.Time) (*jetstream.RawStreamMsg, error) {
	var out *jetstream.RawStreamMsg
	t = t.UTC()
	if _, err := directGet(ctx, js, stream, directRequest{StartTime: &t, NextBySubject: filter}, 1, func(m *jetstream.RawStreamMsg) bool { out = m; return false }); err != nil {
		return nil, err
	}
	if out == nil {
		return nil, ErrNotFound
	}
	return out, nil
}

// Last returns the newest stored message matching filter (wildcards
// allowed: the one newest message over every matching subject).
func Last(ctx context.Context, js jetstream.JetStream, stream, filter string) (*jetstream.RawStreamMsg, error) {
	var out *jetstream.RawStreamMsg
	if _, err := directGet(ctx, js, stream, directRequest{LastBySubject: filter}, 1, func(m *jetstream.RawStreamMsg) bool { out = m; return false }); err != nil {
		return nil, err
	}
	if out == nil {
		return nil, ErrNotFound
	}
	return out, nil
}

// LastFor calls fn with the newest stored message of each subject in
// subjects that has one (in stream order, one request for all of them).
// Subjects with no message are left out.
func LastFor(ctx context.Context, js jetstream.JetStream, stream string, subjects []string, fn func(*jetstream.RawStreamMsg)) error {
	if len(subjects) == 0 {
		return nil
	}
	_, err := directGet(ctx, js, stream, directRequest{MultiLast: subjects, Batch: len(subjects)}, len(subjects),
		func(m *jetstream.RawStreamMsg) bool { fn(m); return true })
	return err
}

// LastUpTo returns the newest stored message of subject (no wildcards)
// with a sequence at most seq (0: any), or, when before is not zero,
// stored before before (seq is then ignored): one step of a walk backwards
// through one subject, whatever else the stream holds in between.
func LastUpTo(ctx context.Context, js jetstream.JetStream, stream, subject string, seq uint64, before time.Time) (*jetstream.RawStreamMsg, error) {
	req := directRequest{MultiLast: []string{subject}, Batch: 1, UpToSeq: seq}
	if !before.IsZero() {
		b := before.UTC()
		req.UpToSeq, req.UpToTime = 0, &b
	}
	var out *jetstream.RawStreamMsg
	if _, err := directGet(ctx, js, stream, req, 1, func(m *jetstream.RawStreamMsg) bool { out = m; return true }); err != nil {
		return nil, err
	}
	if out == nil {
		return nil, ErrNotFound
	}
	return out, nil
}

// directRequest is JetStream's direct get request (ADR-31).
type directRequest struct {
	Seq           uint64     `json:"seq,omitempty"`
	NextBySubject string     `json:"next_by_subj,omitempty"`
	LastBySubject string     `json:"last_by_subj,omitempty"`
	MultiLast     []string   `json:"multi_last,omitempty"`
	Batch         int        `json:"batch,omitempty"`
	MaxBytes      int        `json:"max_bytes,omitempty"`
	StartTime     *time.Time `json:"start_time,omitempty"`
	UpToSeq       uint64     `json:"up_to_seq,omitempty"`
	UpToTime      *time.Time `json:"up_to_time,omitempty"`
}

// directGet sends one direct get and calls fn for each message of the
// answer (at most most), until fn returns false. It reports how many
// messages it read.
//
// It is written here rather than taken from orbit.go's jetstreamext, whose
// GetBatch is the same request: that one subscribes with the client's
// default 64k-slot channel per call (about 0.5 MB allocated per read,
// measured), where a read needs room for its own batch only.
func directGet(ctx context.Context, js jetstream.JetStream, stream string, req directRequest, most int, fn func(*jetstream.RawStreamMsg) bool) (int, error) {
	rctx, cancel := readCtx(ctx)
	defer cancel()
	body, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	nc := js.Conn()
	inbox := nc.NewInbox()
	// Room for the whole answer and its end-of-batch marker, so the
	// client never drops one as a slow consumer.
	ch := make(chan *nats.Msg, most+2)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return 0, readErr(ctx, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(apiSubject(js.Options(), "DIRECT.GET."+stream), inbox, body); err != nil {
		return 0, readErr(ctx, err)
	}
	got := 0
	for {
		select {
		case <-rctx.Done():
			return got, readErr(ctx, rctx.Err())
		case m := <-ch:
			if len(m.Data) == 0 {
				switch st := m.Header.Get("Status"); st {
				case "204": // end of batch
					return got, nil
				case "404": // nothing matched
					return got, nil
				case "":
				default:
					return got, fmt.Errorf("direct read: status %s %s", st, m.Header.Get("Description"))
				}
			}
			raw, err := rawMsg(m)
			if err != nil {
				return got, err
			}
			got++
			if !fn(raw) || (req.Batch == 0 && got >= 1) {
				return got, nil
			}
		}
	}
}

// rawMsg reads a direct get answer's headers.
func rawMsg(m *nats.Msg) (*jetstream.RawStreamMsg, error) {
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("direct read: bad sequence header: %w", err)
	}
	tm, _ := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
	return &jetstream.RawStreamMsg{Subject: m.Header.Get(jetstream.SubjectHeader), Sequence: seq, Header: m.Header, Data: m.Data, Time: tm}, nil
}

// apiSubject is a JetStream API subject under the context's prefix or domain.
func apiSubject(o jetstream.JetStreamOptions, subject string) string {
	switch {
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "." + subject
	case o.Domain != "":
		return "$JS." + o.Domain + ".API." + subject
	}
	return jetstream.DefaultAPIPrefix + subject
}

// readErr keeps the caller's own ended context a context error; anything
// else (a timeout of the read's own deadline included) is a read failure.
func readErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("direct read: %w", err)
}
