package sessionstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
)

// Names of the JetStream resources this store owns.
const (
	SessionsBucket    = "kgent-sessions"
	TranscriptsStream = "kgent-transcripts"
	transcriptRoot    = "kgent.transcript"
)

// TranscriptSubject is where a session's messages are stored.
func TranscriptSubject(tenantID, sessionID string) string {
	return transcriptRoot + "." + tenantID + "." + sessionID
}

// JetStream is the production Store.
type JetStream struct {
	js        jetstream.JetStream
	replicas  int
	connected func() bool

	mu      sync.Mutex
	kv      jetstream.KeyValue
	stream  jetstream.Stream
	ensured bool
}

// NewJetStream returns a store on js. Its bucket and stream are created (or
// updated) on first use, so a replica that starts while NATS is away works
// once NATS is back; EnsureResources does it eagerly.
func NewJetStream(js jetstream.JetStream, replicas int) *JetStream {
	return &JetStream{js: js, replicas: max(replicas, 1)}
}

// FailFast makes every operation answer ErrUnavailable at once while
// connected reports false (streaming.Conn.Connected).
func (s *JetStream) FailFast(connected func() bool) *JetStream {
	s.connected = connected
	return s
}

// EnsureResources creates or updates the bucket and the stream. Every replica
// runs it; it is idempotent.
func (s *JetStream) EnsureResources(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	kv, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       SessionsBucket,
		Description:  "kgents sessions, key <tenant>.<session>",
		History:      1,
		Storage:      jetstream.FileStorage,
		Replicas:     s.replicas,
		MaxValueSize: 64 << 10,
	})
	if err != nil {
		return fmt.Errorf("%w: sessions bucket: %w", ErrUnavailable, err)
	}
	stream, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        TranscriptsStream,
		Description: "kgents transcripts, subject kgent.transcript.<tenant>.<session>; kept forever",
		Subjects:    []string{transcriptRoot + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    s.replicas,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxMsgSize:  256 << 10,
		// Long enough to absorb the spool's replay after most outages; a
		// copy stored after a longer one is dropped when reading (by id).
		Duplicates: 10 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("%w: transcripts stream: %w", ErrUnavailable, err)
	}
	s.kv, s.stream, s.ensured = kv, stream, true
	return nil
}

func (s *JetStream) resources(ctx context.Context) (jetstream.KeyValue, jetstream.Stream, error) {
	if s.connected != nil && !s.connected() {
		return nil, nil, fmt.Errorf("%w: %w", ErrUnavailable, errDisconnected)
	}
	s.mu.Lock()
	kv, stream, ok := s.kv, s.stream, s.ensured
	s.mu.Unlock()
	if ok {
		return kv, stream, nil
	}
	if err := s.EnsureResources(ctx); err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kv, s.stream, nil
}

// storedRecord is a record's JSON form in the bucket (readable with `nats kv get`).
type storedRecord struct {
	Session  json.RawMessage `json:"session"`
	EventSeq uint64          `json:"event_seq"`
	Turn     *Turn           `json:"turn,omitempty"`
}

func encodeRecord(r *Record) ([]byte, error) {
	s, err := apijson.Marshal(r.Session)
	if err != nil {
		return nil, err
	}
	return json.Marshal(storedRecord{Session: s, EventSeq: r.EventSeq, Turn: r.Turn})
}

func decodeRecord(b []byte, rev uint64) (*Record, error) {
	var sr storedRecord
	if err := json.Unmarshal(b, &sr); err != nil {
		return nil, fmt.Errorf("stored session is corrupt: %w", err)
	}
	sess := &sessionsv1.Session{}
	if err := apijson.Unmarshal(sr.Session, sess); err != nil {
		return nil, fmt.Errorf("stored session is corrupt: %w", err)
	}
	return &Record{Session: sess, EventSeq: sr.EventSeq, Turn: sr.Turn, Revision: rev}, nil
}

// unavailable classifies a NATS failure: the caller's own ended context
// stays a context error; anything else (including NATS's request timeouts
// while it is unreachable) means storage is unavailable.
func unavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// errDisconnected answers at once while NATS is known to be unreachable,
// instead of waiting out a request timeout on every call.
var errDisconnected = errors.New("not connected to NATS")

// Create stores a new session.
func (s *JetStream) Create(ctx context.Context, sess *sessionsv1.Session) (*Record, error) {
	kv, _, err := s.resources(ctx)
	if err != nil {
		return nil, err
	}
	r := &Record{Session: proto.Clone(sess).(*sessionsv1.Session)}
	b, err := encodeRecord(r)
	if err != nil {
		return nil, err
	}
	rev, err := kv.Create(ctx, key(sess.GetTenantId(), sess.GetId()), b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, ErrExists
	}
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	r.Revision = rev
	return r, nil
}

// Get returns a tenant's session.
func (s *JetStream) Get(ctx context.Context, tenantID, sessionID string) (*Record, error) {
	kv, _, err := s.resources(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, key(tenantID, sessionID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	return decodeRecord(e.Value(), e.Revision())
}

// List reads every session of the tenant with one filtered watch (one
// consumer, not one request per key), then sorts and pages.
func (s *JetStream) List(ctx context.Context, tenantID string, offset, limit int) ([]*sessionsv1.Session, int, error) {
	kv, _, err := s.resources(ctx)
	if err != nil {
		return nil, 0, err
	}
	w, err := kv.WatchFiltered(ctx, []string{tenantID + ".*"}, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, 0, unavailable(ctx, err)
	}
	defer func() { _ = w.Stop() }()
	var all []*sessionsv1.Session
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, 0, fmt.Errorf("%w: session listing ended early", ErrUnavailable)
			}
			if e == nil { // the initial values are all delivered
				sortNewestFirst(all)
				return page(all, offset, limit), len(all), nil
			}
			r, err := decodeRecord(e.Value(), e.Revision())
			if err != nil {
				return nil, 0, err
			}
			all = append(all, r.Session)
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// maxUpdateAttempts bounds compare-and-set retries under contention.
const maxUpdateAttempts = 16

// Update applies fn with compare-and-set, retrying on concurrent changes.
func (s *JetStream) Update(ctx context.Context, tenantID, sessionID string, fn func(*Record) error) (*Record, error) {
	kv, _, err := s.resources(ctx)
	if err != nil {
		return nil, err
	}
	k := key(tenantID, sessionID)
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, ErrNotFound
		}
		if err != nil {
			return nil, unavailable(ctx, err)
		}
		r, err := decodeRecord(e.Value(), e.Revision())
		if err != nil {
			return nil, err
		}
		if err := fn(r); err != nil {
			return nil, err
		}
		b, err := encodeRecord(r)
		if err != nil {
			return nil, err
		}
		rev, err := kv.Update(ctx, k, b, e.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			continue
		}
		if err != nil {
			return nil, unavailable(ctx, err)
		}
		r.Revision = rev
		return r, nil
	}
	return nil, ErrConflict
}

// AppendMessage publishes the message to the transcript and waits for
// JetStream's acknowledgement: once it returns, the message is stored. The
// message id is the Nats-Msg-Id, so a retry does not store it twice.
func (s *JetStream) AppendMessage(ctx context.Context, tenantID string, m *sessionsv1.Message) error {
	if _, _, err := s.resources(ctx); err != nil {
		return err
	}
	b, err := apijson.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := s.js.Publish(ctx, TranscriptSubject(tenantID, m.GetSessionId()), b, jetstream.WithMsgID(m.GetId())); err != nil {
		return unavailable(ctx, err)
	}
	return nil
}

// Messages returns a page of a transcript, oldest first.
func (s *JetStream) Messages(ctx context.Context, tenantID, sessionID string, offset, limit int) ([]*sessionsv1.Message, int, error) {
	_, stream, err := s.resources(ctx)
	if err != nil {
		return nil, 0, err
	}
	subject := TranscriptSubject(tenantID, sessionID)
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return nil, 0, unavailable(ctx, err)
	}
	total := int(info.State.Subjects[subject])
	if offset >= total || limit <= 0 {
		return []*sessionsv1.Message{}, total, nil
	}
	want := min(offset+limit, total)
	cons, err := s.js.OrderedConsumer(ctx, TranscriptsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, 0, unavailable(ctx, err)
	}
	out := make([]*sessionsv1.Message, 0, want-offset)
	ids := make(map[string]bool, want)
	seen := 0
	for seen < want {
		batch, err := cons.Fetch(want-seen, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, 0, unavailable(ctx, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			if seen++; seen <= offset {
				continue
			}
			m := &sessionsv1.Message{}
			if err := apijson.Unmarshal(msg.Data(), m); err != nil {
				return nil, 0, fmt.Errorf("stored message is corrupt: %w", err)
			}
			if ids[m.GetId()] {
				continue // stored twice by a replay after a long outage
			}
			ids[m.GetId()] = true
			out = append(out, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, 0, unavailable(ctx, err)
		}
		if n == 0 {
			break // fewer than the count said (a concurrent purge): return what exists
		}
	}
	return out, total, nil
}
