package sessionstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/streaming"
)

// Names of the JetStream resources this store owns.
const (
	SessionsBucket    = "kgent-sessions"
	IndexBucket       = "kgent-session-index"
	TranscriptsStream = "kgent-transcripts"
	transcriptRoot    = "kgent.transcript"
)

// TranscriptSubject is where message number n of a session is stored: one
// subject per message, written once, so a page is a batch of direct gets.
func TranscriptSubject(tenantID, sessionID string, n int) string {
	return transcriptRoot + "." + tenantID + "." + sessionID + "." + strconv.Itoa(n)
}

// kvStream and kvSubject name a KV bucket's stream and a key's subject, for
// direct batched reads of many keys in one request.
func kvStream(bucket string) string       { return "KV_" + bucket }
func kvSubject(bucket, key string) string { return "$KV." + bucket + "." + key }

// JetStream is the production Store.
type JetStream struct {
	js        jetstream.JetStream
	replicas  int
	connected func() bool
	ordinals  *ordinals

	mu      sync.Mutex
	kv      jetstream.KeyValue
	index   jetstream.KeyValue
	ensured bool
}

// NewJetStream returns a store on js. Its bucket and stream are created (or
// updated) on first use, so a replica that starts while NATS is away works
// once NATS is back; EnsureResources does it eagerly.
func NewJetStream(js jetstream.JetStream, replicas int) *JetStream {
	return &JetStream{js: js, replicas: max(replicas, 1), ordinals: newOrdinals()}
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
	index, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       IndexBucket,
		Description:  "kgents session listing, key <tenant>.<ordinal> → session id",
		History:      1,
		Storage:      jetstream.FileStorage,
		Replicas:     s.replicas,
		MaxValueSize: 256,
	})
	if err != nil {
		return fmt.Errorf("%w: session index bucket: %w", ErrUnavailable, err)
	}
	_, err = s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        TranscriptsStream,
		Description: "kgents transcripts, subject kgent.transcript.<tenant>.<session>.<n>; kept forever",
		Subjects:    []string{transcriptRoot + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    s.replicas,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxMsgSize:  256 << 10,
		// Pages are read with batched direct gets, never consumers.
		AllowDirect: true,
		// Long enough to absorb the spool's replay after most outages; a
		// later copy is refused by the write-once rule (expected last
		// subject sequence 0) and recognised by its message id.
		Duplicates: 10 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("%w: transcripts stream: %w", ErrUnavailable, err)
	}
	s.kv, s.index, s.ensured = kv, index, true
	return nil
}

func (s *JetStream) resources(ctx context.Context) (kv, index jetstream.KeyValue, err error) {
	if s.connected != nil && !s.connected() {
		// At once while NATS is known to be unreachable, instead of
		// waiting out a request timeout on every call.
		return nil, nil, fmt.Errorf("%w: %w", ErrUnavailable, nats.ErrDisconnected)
	}
	s.mu.Lock()
	kv, index, ok := s.kv, s.index, s.ensured
	s.mu.Unlock()
	if ok {
		return kv, index, nil
	}
	if err := s.EnsureResources(ctx); err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kv, s.index, nil
}

// storedRecord is a record's JSON form in the bucket (readable with `nats kv get`).
type storedRecord struct {
	// V is the record's layout: 2 since transcripts are numbered and
	// sessions indexed; older records are migrated (migrate.go).
	V        int             `json:"v"`
	Session  json.RawMessage `json:"session"`
	EventSeq uint64          `json:"event_seq"`
	Turn     *Turn           `json:"turn,omitempty"`
	// Unindexed: see Record.Unindexed.
	Unindexed bool `json:"unindexed,omitempty"`
}

// layout is the record layout this version writes.
const layout = 2

func encodeRecord(r *Record) ([]byte, error) {
	s, err := apijson.Marshal(r.Session)
	if err != nil {
		return nil, err
	}
	return json.Marshal(storedRecord{V: layout, Session: s, EventSeq: r.EventSeq, Turn: r.Turn, Unindexed: r.Unindexed})
}

func decodeRecord(b []byte, rev uint64) (*Record, error) {
	sr, err := decodeStored(b)
	if err != nil {
		return nil, err
	}
	sess := &sessionsv1.Session{}
	if err := apijson.Unmarshal(sr.Session, sess); err != nil {
		return nil, fmt.Errorf("stored session is corrupt: %w", err)
	}
	return &Record{Session: sess, EventSeq: sr.EventSeq, Turn: sr.Turn, Unindexed: sr.Unindexed, Revision: rev}, nil
}

func decodeStored(b []byte) (storedRecord, error) {
	var sr storedRecord
	if err := json.Unmarshal(b, &sr); err != nil {
		return sr, fmt.Errorf("stored session is corrupt: %w", err)
	}
	return sr, nil
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

// Create stores a new session, then gives it the next place in the
// tenant's listing. If it cannot be listed the record is removed again, so
// a failed create leaves nothing behind (best effort: a record left by a
// failed removal is indexed by its first update).
func (s *JetStream) Create(ctx context.Context, sess *sessionsv1.Session) (*Record, error) {
	kv, index, err := s.resources(ctx)
	if err != nil {
		return nil, err
	}
	r := &Record{Session: proto.Clone(sess).(*sessionsv1.Session), Unindexed: true}
	b, err := encodeRecord(r)
	if err != nil {
		return nil, err
	}
	k := key(sess.GetTenantId(), sess.GetId())
	rev, err := kv.Create(ctx, k, b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, ErrExists
	}
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	if _, err := s.claimOrdinal(ctx, index, sess.GetTenantId(), sess.GetId()); err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = kv.Delete(dctx, k, jetstream.LastRevision(rev))
		return nil, err
	}
	r.Unindexed = false
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

// List returns a page of the tenant's sessions, newest first, in O(page):
// the newest index entry gives the total, one batched direct get reads the
// page's index entries and another their records.
func (s *JetStream) List(ctx context.Context, tenantID string, offset, limit int) ([]*sessionsv1.Session, int, error) {
	if _, _, err := s.resources(ctx); err != nil {
		return nil, 0, err
	}
	total, err := s.lastOrdinal(ctx, tenantID)
	if err != nil {
		return nil, 0, err
	}
	hi := int64(total) - int64(max(offset, 0)) // newest ordinal of the page
	if limit <= 0 || hi < 1 {
		return []*sessionsv1.Session{}, int(total), nil
	}
	lo := max(hi-int64(min(limit, MaxMessagesRead))+1, 1)
	subjects := make([]string, 0, hi-lo+1)
	for n := hi; n >= lo; n-- {
		subjects = append(subjects, kvSubject(IndexBucket, tenantID+"."+strconv.FormatInt(n, 10)))
	}
	ids := make(map[uint64]string, len(subjects))
	if err := streaming.LastFor(ctx, s.js, kvStream(IndexBucket), subjects, func(m *jetstream.RawStreamMsg) {
		if isKVDelete(m) {
			return
		}
		if n, err := strconv.ParseUint(lastToken(m.Subject), 10, 64); err == nil {
			ids[n] = string(m.Data)
		}
	}); err != nil {
		return nil, 0, unavailable(ctx, err)
	}
	recSubjects := make([]string, 0, len(ids))
	for n := hi; n >= lo; n-- {
		if id, ok := ids[uint64(n)]; ok {
			recSubjects = append(recSubjects, kvSubject(SessionsBucket, key(tenantID, id)))
		}
	}
	byID := make(map[string]*sessionsv1.Session, len(recSubjects))
	var derr error
	if err := streaming.LastFor(ctx, s.js, kvStream(SessionsBucket), recSubjects, func(m *jetstream.RawStreamMsg) {
		if isKVDelete(m) {
			return
		}
		r, err := decodeRecord(m.Data, m.Sequence)
		if err != nil {
			derr = err
			return
		}
		byID[r.Session.GetId()] = r.Session
	}); err != nil {
		return nil, 0, unavailable(ctx, err)
	}
	if derr != nil {
		return nil, 0, derr
	}
	out := make([]*sessionsv1.Session, 0, len(byID))
	for n := hi; n >= lo; n-- {
		if sess, ok := byID[ids[uint64(n)]]; ok {
			out = append(out, sess)
			delete(byID, sess.GetId()) // indexed twice (a rare race): listed once
		}
	}
	return out, int(total), nil
}

// maxUpdateAttempts bounds compare-and-set retries under contention.
const maxUpdateAttempts = 16

// Update applies fn with compare-and-set, retrying on concurrent changes. A
// record not yet in the tenant's listing (created while NATS was away) is
// indexed on the way.
func (s *JetStream) Update(ctx context.Context, tenantID, sessionID string, fn func(*Record) error) (*Record, error) {
	kv, index, err := s.resources(ctx)
	if err != nil {
		return nil, err
	}
	k := key(tenantID, sessionID)
	claimed := false // kept across attempts: a session is indexed once
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
		if r.Unindexed && !claimed {
			if _, err := s.claimOrdinal(ctx, index, tenantID, sessionID); err != nil {
				return nil, err
			}
			claimed = true
		}
		r.Unindexed = false
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

// writeOnce is the header that makes a transcript subject take one message:
// the publish fails if the subject already has one.
const writeOnce = jetstream.ExpectedLastSubjSeqHeader

// writeOnceAt publishes a transcript message to subject, written once,
// under its message id.
func (s *JetStream) writeOnceAt(ctx context.Context, subject string, data []byte, id string) (*jetstream.PubAck, error) {
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Header.Set(writeOnce, "0")
	return s.js.PublishMsg(ctx, msg)
}

// AppendMessage publishes message n to its own subject, write-once, and
// waits for JetStream's acknowledgement: once it returns, the message is
// stored. The message id is the Nats-Msg-Id, so a retry inside the
// duplicate window is stored once; after it, the write-once rule refuses
// the copy and the stored message is compared by id.
func (s *JetStream) AppendMessage(ctx context.Context, tenantID string, n int, m *sessionsv1.Message) error {
	if _, _, err := s.resources(ctx); err != nil {
		return err
	}
	b, err := apijson.Marshal(m)
	if err != nil {
		return err
	}
	subject := TranscriptSubject(tenantID, m.GetSessionId(), n)
	_, err = s.writeOnceAt(ctx, subject, b, m.GetId())
	if isWrongLastSequence(err) {
		return s.sameMessage(ctx, subject, m.GetId())
	}
	if err != nil {
		return unavailable(ctx, err)
	}
	return nil
}

// sameMessage reports whether the message stored at subject is id (a copy
// of one already stored): nil if so, ErrConflict if another took its place.
func (s *JetStream) sameMessage(ctx context.Context, subject, id string) error {
	var stored *sessionsv1.Message
	err := streaming.LastFor(ctx, s.js, TranscriptsStream, []string{subject}, func(m *jetstream.RawStreamMsg) {
		stored = &sessionsv1.Message{}
		if apijson.Unmarshal(m.Data, stored) != nil {
			stored = nil
		}
	})
	if err != nil {
		return unavailable(ctx, err)
	}
	if stored != nil && stored.GetId() == id {
		return nil
	}
	return fmt.Errorf("%w: message number taken by another message", ErrConflict)
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Messages reads messages from..to-1 with one batched direct get.
func (s *JetStream) Messages(ctx context.Context, tenantID, sessionID string, from, to int) ([]*sessionsv1.Message, error) {
	from, to, err := checkRange(from, to)
	if err != nil {
		return nil, err
	}
	if _, _, err := s.resources(ctx); err != nil {
		return nil, err
	}
	if to <= from {
		return []*sessionsv1.Message{}, nil
	}
	subjects := make([]string, 0, to-from)
	for n := from; n < to; n++ {
		subjects = append(subjects, TranscriptSubject(tenantID, sessionID, n))
	}
	byNumber := make(map[int]*sessionsv1.Message, len(subjects))
	var derr error
	err = streaming.LastFor(ctx, s.js, TranscriptsStream, subjects, func(m *jetstream.RawStreamMsg) {
		n, err := strconv.Atoi(lastToken(m.Subject))
		if err != nil {
			return
		}
		msg := &sessionsv1.Message{}
		if err := apijson.Unmarshal(m.Data, msg); err != nil {
			derr = fmt.Errorf("stored message is corrupt: %w", err)
			return
		}
		byNumber[n] = msg
	})
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	if derr != nil {
		return nil, derr
	}
	out := make([]*sessionsv1.Message, 0, len(byNumber))
	for n := from; n < to; n++ {
		if m, ok := byNumber[n]; ok {
			out = append(out, m)
		}
	}
	return out, nil
}

func lastToken(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// isKVDelete reports a KV tombstone (a delete or purge marker).
func isKVDelete(m *jetstream.RawStreamMsg) bool {
	op := m.Header.Get("KV-Operation")
	return op == "DEL" || op == "PURGE"
}
